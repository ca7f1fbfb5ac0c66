//! Exit and OOM events from containerd's events service, fed into per-instance watch channels.
//!
//! `Subscribe` only answers (headers and all) with the first matching event, so the loop
//! publishes a ping event in our namespace until its subscription answers: from then on the
//! subscription is known to be live. After a reconnect, instances with no exit yet are checked
//! with `Tasks.Get`, so an exit missed while disconnected is still reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::{
    DeleteTaskRequest, GetRequest, PublishRequest, SubscribeRequest,
};
use containerd_client::tonic::{Status, Streaming};
use containerd_client::types::v1::Status as ProcessStatus;
use containerd_client::types::Envelope;
use prost::Message;
use serverless_core::Exit;
use tokio::sync::watch;

use crate::cgroup;
use crate::client::Client;

const PING_TOPIC: &str = "/serverless/ping";

/// One container's exit, as far as it is known.
struct ExitWatch {
    tx: watch::Sender<Option<Exit>>,
    oom: bool,
    /// The exit is known and being published.
    exiting: bool,
    cgroup: String,
}

/// Instance id → its exit (once known).
#[derive(Default)]
pub(crate) struct Exits {
    map: Mutex<HashMap<String, ExitWatch>>,
}

impl Exits {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ExitWatch>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching `id` (before its task is created, so no exit can be missed).
    pub(crate) fn register(&self, id: &str, cgroup: String) -> watch::Receiver<Option<Exit>> {
        let (tx, rx) = watch::channel(None);
        self.lock().insert(
            id.to_owned(),
            ExitWatch {
                tx,
                oom: false,
                exiting: false,
                cgroup,
            },
        );
        rx
    }

    pub(crate) fn watch(&self, id: &str) -> Option<watch::Receiver<Option<Exit>>> {
        self.lock().get(id).map(|s| s.tx.subscribe())
    }

    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn on_oom(&self, id: &str) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.oom = true;
        }
    }

    /// Takes note of an exit and returns it if it is news. The cgroup still exists until the
    /// task is deleted, so its OOM counter tells an OOM kill even when the OOM event arrives
    /// after the exit event.
    fn on_exit(&self, id: &str, status: u32) -> Option<Exit> {
        let mut map = self.lock();
        let entry = map.get_mut(id)?;
        if entry.exiting || entry.tx.borrow().is_some() {
            return None;
        }
        entry.exiting = true;
        let oom_killed = entry.oom || cgroup::oom_killed(&entry.cgroup);
        let code = i32::try_from(status).unwrap_or(i32::MAX);
        Some(Exit { code, oom_killed })
    }

    fn publish(&self, id: &str, exit: Exit) {
        if let Some(entry) = self.lock().get(id) {
            entry.tx.send_replace(Some(exit));
        }
    }

    fn pending(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| !s.exiting && s.tx.borrow().is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Runs until the process ends (the task is aborted on shutdown).
pub(crate) async fn run(client: Client, exits: Arc<Exits>, ready: watch::Sender<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match subscribe(&client).await {
            Ok(mut stream) => {
                ready.send_replace(true);
                backoff = Duration::from_millis(50);
                resync(&client, &exits).await;
                loop {
                    match stream.message().await {
                        Ok(Some(envelope)) => handle(&client, &exits, envelope),
                        Ok(None) => {
                            tracing::warn!("containerd event stream ended; resubscribing");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e.message(), "containerd event stream failed; resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "subscribing to containerd events failed");
            }
        }
        ready.send_replace(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe(client: &Client) -> Result<Streaming<Envelope>, Status> {
    let mut events = client.events();
    let filter = format!("namespace==\"{}\"", client.namespace_name);
    let call = events.subscribe(SubscribeRequest {
        filters: vec![filter],
    });
    tokio::pin!(call);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut publisher = client.events();
    loop {
        tokio::select! {
            subscribed = &mut call => return subscribed.map(|r| r.into_inner()),
            _ = tick.tick() => {
                let ping = PublishRequest {
                    topic: PING_TOPIC.to_owned(),
                    event: Some(prost_types::Any {
                        type_url: "serverless.events.Ping".to_owned(),
                        value: Vec::new(),
                    }),
                };
                publisher.publish(client.req(ping)).await?;
            }
        }
    }
}

/// Publishes an exit once the task is deleted: deleting waits for the shim to copy the last
/// output into the log and frees the shim, so whoever wakes up on the exit reads complete logs.
/// Container and snapshot stay until `stop`. Only the first call for an exit deletes the task
/// (a second delete running concurrently could keep the shim from shutting down).
pub(crate) fn exited(client: &Client, exits: &Arc<Exits>, id: &str, status: u32) {
    let Some(exit) = exits.on_exit(id, status) else {
        return;
    };
    let (client, exits, id) = (client.clone(), exits.clone(), id.to_owned());
    tokio::spawn(async move {
        let deleted = client
            .tasks()
            .delete(client.req(DeleteTaskRequest {
                container_id: id.clone(),
            }))
            .await;
        if let Err(e) = deleted {
            tracing::debug!(instance = %id, error = %e.message(), "deleting an exited task failed");
        }
        exits.publish(&id, exit);
    });
}

fn handle(client: &Client, exits: &Arc<Exits>, envelope: Envelope) {
    let Some(event) = envelope.event else {
        return;
    };
    match envelope.topic.as_str() {
        "/tasks/exit" => {
            if let Ok(e) = TaskExit::decode(&event.value[..]) {
                // Only the init process ends the instance (`id` is the exec id).
                if e.id == e.container_id {
                    exited(client, exits, &e.container_id, e.exit_status);
                }
            }
        }
        "/tasks/oom" => {
            if let Ok(e) = TaskOom::decode(&event.value[..]) {
                exits.on_oom(&e.container_id);
            }
        }
        _ => {}
    }
}

async fn resync(client: &Client, exits: &Arc<Exits>) {
    for id in exits.pending() {
        let got = client
            .tasks()
            .get(client.req(GetRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await;
        if let Ok(resp) = got {
            if let Some(p) = resp.into_inner().process {
                if p.status == ProcessStatus::Stopped as i32 {
                    exited(client, exits, &id, p.exit_status);
                }
            }
        }
    }
}
