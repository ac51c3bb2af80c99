//! The run coordinators a primitive wakes when something changes (units come back, a barrier
//! round ends): each once, with one message naming the gate (its index in that run's agent).

use tokio::sync::mpsc::UnboundedSender;

use crate::scheduler::Message;

/// How a coordinator asks to be woken: its run key, its channel, the gate's index there.
pub(crate) type Wake<'a> = Option<(u64, &'a UnboundedSender<Message>, usize)>;

#[derive(Default)]
pub(crate) struct Wakers(Vec<(u64, UnboundedSender<Message>, usize)>);

impl Wakers {
    /// Remembers to wake a coordinator (once per run).
    pub(crate) fn register(&mut self, wake: Wake<'_>) {
        if let Some((run_key, sender, gate)) = wake
            && !self.0.iter().any(|(key, _, _)| *key == run_key)
        {
            self.0.push((run_key, sender.clone(), gate));
        }
    }

    /// A run that ended needs no waking.
    pub(crate) fn forget(&mut self, run_key: u64) {
        self.0.retain(|(key, _, _)| *key != run_key);
    }

    /// Takes every registered coordinator out, to wake once the primitive's lock is let go.
    pub(crate) fn take(&mut self) -> Wakers {
        Wakers(std::mem::take(&mut self.0))
    }

    /// Wakes them: each asks again.
    pub(crate) fn wake(self) {
        for (_, sender, gate) in self.0 {
            // An error only means the run has ended.
            let _ = sender.send(Message::GateReleased { gate });
        }
    }
}
