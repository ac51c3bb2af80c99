//! LISTEN/NOTIFY: a connection of its own that listens on channels and wakes whoever waits
//! when a notification comes. A broken connection is reopened; waiters also poll, so a
//! notification lost meanwhile delays them by at most their poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::PgBackend;

/// Wakes its waiters on every notification of its channels. Listens until dropped.
pub(crate) struct Listener {
    /// One per channel, in the order given.
    notify: Arc<[Arc<Notify>]>,
    task: tokio::task::AbortHandle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Listens on `channels` (plain identifiers) from the backend's runtime.
    pub(crate) fn start(backend: &PgBackend, channels: &[&str]) -> Self {
        let notify: Arc<[Arc<Notify>]> = channels.iter().map(|_| Arc::default()).collect();
        let names: Vec<String> = channels.iter().map(|&c| c.to_owned()).collect();
        let statement: String = channels
            .iter()
            .map(|channel| format!("LISTEN {channel};"))
            .collect();
        let config = backend.config().clone();
        let woken = Arc::clone(&notify);
        let task = backend.spawn(async move {
            loop {
                if let Ok((client, mut connection)) = config.connect(NoTls).await {
                    // The LISTEN goes out through the client while the connection is polled
                    // here for its messages.
                    let listen = client.batch_execute(&statement);
                    tokio::pin!(listen);
                    let mut listening = false;
                    loop {
                        let message = std::future::poll_fn(|cx| {
                            if !listening
                                && let std::task::Poll::Ready(result) = listen.as_mut().poll(cx)
                            {
                                listening = true;
                                if result.is_err() {
                                    return std::task::Poll::Ready(None);
                                }
                                // Anything sent before the LISTEN took effect was missed:
                                // waiters look again.
                                woken.iter().for_each(|n| n.notify_waiters());
                            }
                            connection.poll_message(cx)
                        })
                        .await;
                        match message {
                            Some(Ok(AsyncMessage::Notification(note))) => {
                                if let Some(i) = names.iter().position(|c| c == note.channel()) {
                                    woken[i].notify_waiters();
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { notify, task }
    }

    /// What the waiters on channel `channel` (by its index among those listened on) wait on.
    pub(crate) fn notify(&self, channel: crate::backend::Channel) -> &Arc<Notify> {
        &self.notify[channel as usize]
    }
}
