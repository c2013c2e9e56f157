//! Watch over HTTP: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`),
//! ending at `timeoutSeconds`; a version too old to resume from gets an in-stream `ERROR` with a 410 Status.

use std::time::Duration;

use axum::body::{Body, Bytes};
use dovetail::kube::WatchEvent;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use super::resources::Resource;
use super::status::ApiError;
use super::table::{Include, table};
use super::{ApiServer, query::Selection};

/// How often a watch that asked for bookmarks is told the current resourceVersion.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// What one watch request asked for.
pub struct WatchRequest {
    pub resource: Resource,
    pub selection: Selection,
    /// Events already due (synthetic ADDED for a watch without a version), sent first.
    pub initial: Vec<Value>,
    pub events: UnboundedReceiver<WatchEvent>,
    pub timeout: Duration,
    pub bookmarks: bool,
    pub as_table: Option<Include>,
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Where a watch is; times are the server's clock (simulated time in a simulation).
struct State {
    server: ApiServer,
    req: WatchRequest,
    deadline: jiff::Timestamp,
    next_bookmark: jiff::Timestamp,
    done: bool,
}

/// How long from `now` until `then` (zero if past).
fn until(now: jiff::Timestamp, then: jiff::Timestamp) -> Duration {
    let gap = then.as_millisecond() - now.as_millisecond();
    Duration::from_millis(u64::try_from(gap).unwrap_or(0))
}

fn later(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    t.checked_add(d).unwrap_or(t)
}

impl State {
    fn render(&self, kind: &str, object: Value) -> Bytes {
        match self.req.as_table {
            Some(include) => {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let t = table(
                    &self.req.resource,
                    std::slice::from_ref(&object),
                    self.server.now(),
                    include,
                    &rv,
                    None,
                );
                line(kind, t)
            }
            None => line(kind, object),
        }
    }

    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, State)> {
        if self.done {
            return None;
        }
        if !self.req.initial.is_empty() {
            let o = self.req.initial.remove(0);
            let bytes = self.render("ADDED", o);
            return Some((Ok(bytes), self));
        }
        loop {
            let now = self.server.now();
            if now >= self.deadline {
                return None;
            }
            let wake = if self.req.bookmarks {
                self.deadline.min(self.next_bookmark)
            } else {
                self.deadline
            };
            let clock = self.server.clock();
            let event = tokio::select! {
                biased;
                e = self.req.events.recv() => e,
                () = clock.sleep(until(now, wake)) => {
                    let now = self.server.now();
                    if now >= self.deadline {
                        return None;
                    }
                    if now < self.next_bookmark {
                        continue;
                    }
                    self.next_bookmark = later(now, BOOKMARK_EVERY);
                    let rv = self.server.kube.store().resource_version().to_string();
                    let bookmark = json!({
                        "kind": self.req.resource.kind,
                        "apiVersion": self.req.resource.group_version(),
                        "metadata": {"resourceVersion": rv},
                    });
                    return Some((Ok(line("BOOKMARK", bookmark)), self));
                }
            };
            let (kind, object) = match event {
                None => return None,
                Some(WatchEvent::Added(o)) => ("ADDED", o),
                Some(WatchEvent::Modified(o)) => ("MODIFIED", o),
                Some(WatchEvent::Deleted(o)) => ("DELETED", o),
                Some(WatchEvent::Expired) => {
                    self.done = true;
                    let gone = ApiError::new(
                        410,
                        "Expired",
                        "too old resource version: the watch cache no longer holds it; list again",
                    );
                    return Some((Ok(line("ERROR", gone.status())), self));
                }
            };
            if !self.req.selection.matches(&object) {
                continue;
            }
            let bytes = self.render(kind, object);
            return Some((Ok(bytes), self));
        }
    }
}

/// The streaming body of a watch.
pub fn body(server: ApiServer, req: WatchRequest) -> Body {
    let now = server.now();
    let state = State {
        deadline: later(now, req.timeout),
        next_bookmark: later(now, BOOKMARK_EVERY),
        server,
        req,
        done: false,
    };
    Body::from_stream(futures::stream::unfold(state, State::next).boxed())
}
