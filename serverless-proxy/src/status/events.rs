//! `GET /v1/events`: server-sent events from the status hub.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::{broadcast, mpsc};

use crate::body::{BoxError, ResBody};

/// Frames queued per client between its forwarding task and its connection.
const CLIENT_FRAMES: usize = 8;

/// The frames of one client, as a response body.
struct EventsBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for EventsBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }
}

/// The events stream of one client: the state now, then every frame the hub sends. A client
/// that reads slower than frames come skips the frames it missed (each `state` frame is
/// complete); the stream ends when the client goes or the gateway stops.
pub(crate) fn events_response(engine: &crate::Engine) -> Response<ResBody> {
    let status: &Arc<super::Status> = engine.status();
    let (first, mut frames, mut closed) = status.subscribe(engine);
    let (tx, rx) = mpsc::channel(CLIENT_FRAMES);
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            let frame = tokio::select! {
                frame = frames.recv() => frame,
                () = tx.closed() => return,
                _ = closed.wait_for(|c| *c) => return,
            };
            match frame {
                Ok(frame) => {
                    // Waits for this client only; the hub's channel keeps going without it.
                    tokio::select! {
                        sent = tx.send(frame) => if sent.is_err() { return },
                        _ = closed.wait_for(|c| *c) => return,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "events client lagged; frames skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut res = Response::new(EventsBody { rx }.boxed_unsync());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "text/event-stream".parse().expect("static"),
    );
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    res
}
