//! Following one Pod through the API's watch, restarted when the API server ends it.

use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};

/// What the watch saw.
#[derive(Debug)]
pub(crate) enum Seen {
    /// The Pod as it is now.
    Pod(Box<Pod>),
    /// The Pod is gone (its last state, when the API sent it).
    Deleted(Option<Box<Pod>>),
}

/// Consecutive failed (re)connects of a watch before it gives up.
const MAX_FAILURES: u32 = 5;

/// A watch on one Pod by name, from a resource version on. It restarts by itself when the API
/// server closes the stream (its timeout, a restart), resynchronises with a `GET` when the
/// version is too old (`410 Gone`), and fails only after several connects in a row failed.
pub(crate) struct PodWatch {
    api: Api<Pod>,
    name: String,
    version: String,
    stream: Option<BoxStream<'static, kube::Result<WatchEvent<Pod>>>>,
    failures: u32,
    /// An event came since the stream was opened.
    heard: bool,
    /// Watches (re)opened so far, for tests and logs.
    pub(crate) opened: u32,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl PodWatch {
    /// Follows Pod `name` from `version` on (the version of the state already seen).
    pub(crate) fn new(api: Api<Pod>, name: &str, version: String) -> Self {
        Self {
            api,
            name: name.to_owned(),
            version,
            stream: None,
            failures: 0,
            heard: false,
            opened: 0,
        }
    }

    fn remember(&mut self, pod: &Pod) {
        if let Some(v) = &pod.metadata.resource_version {
            self.version.clone_from(v);
        }
    }

    async fn failed(&mut self, error: kube::Error) -> Result<(), kube::Error> {
        self.stream = None;
        self.failures += 1;
        if self.failures >= MAX_FAILURES {
            return Err(error);
        }
        tracing::debug!(pod = %self.name, %error, "pod watch failed; reconnecting");
        tokio::time::sleep(Duration::from_millis(100 << self.failures.min(4))).await;
        Ok(())
    }

    /// The next change of the Pod.
    pub(crate) async fn next(&mut self) -> Result<Seen, kube::Error> {
        loop {
            let Some(stream) = &mut self.stream else {
                let params = WatchParams::default()
                    .fields(&format!("metadata.name={}", self.name))
                    .timeout(290);
                match self.api.watch(&params, &self.version).await {
                    Ok(s) => {
                        self.opened += 1;
                        self.heard = false;
                        self.stream = Some(s.boxed());
                    }
                    Err(e) => self.failed(e).await?,
                }
                continue;
            };
            let event = stream.next().await;
            if matches!(event, Some(Ok(_))) {
                self.heard = true;
            }
            match event {
                Some(Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                    self.failures = 0;
                    self.remember(&pod);
                    return Ok(Seen::Pod(Box::new(pod)));
                }
                Some(Ok(WatchEvent::Deleted(pod))) => {
                    return Ok(Seen::Deleted(Some(Box::new(pod))))
                }
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    self.version = b.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    // Our version is too old: read the Pod afresh and go on from there.
                    self.stream = None;
                    match self.api.get_opt(&self.name).await {
                        Ok(Some(pod)) => {
                            self.remember(&pod);
                            return Ok(Seen::Pod(Box::new(pod)));
                        }
                        Ok(None) => return Ok(Seen::Deleted(None)),
                        Err(e) => self.failed(e).await?,
                    }
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    self.failed(kube::Error::Api(status)).await?
                }
                Some(Err(e)) => self.failed(e).await?,
                // The server ended the watch (its timeout): go on from the last version, a
                // little later if it ended without a word (no busy loop on a broken server).
                None => {
                    self.stream = None;
                    if !self.heard {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}
