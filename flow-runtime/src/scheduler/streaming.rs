//! What the coordinator sends to a run's streams (see `crate::stream`): the context after
//! each state. (Writes and emitted parts go from the states themselves; events through the
//! publisher.)

use std::sync::Arc;

use flow_core::StateId;

use super::Coordinator;

impl Coordinator {
    /// Sends the context after `state` completed to the run's value streams (made only when
    /// someone streams values).
    pub(super) fn stream_values(&self, state: StateId) {
        let stream = &self.observer.stream;
        if !stream.wants(crate::StreamMode::VALUES) {
            return;
        }
        let values = match self.context.snapshot() {
            Ok(values) => values,
            // Said in the part rather than dropped: a value that does not serialize.
            Err(error) => [("(not serializable)".to_owned(), error.to_string().into())]
                .into_iter()
                .collect(),
        };
        stream.publish(crate::StreamMode::VALUES, || crate::StreamPart::Values {
            after: Arc::clone(self.graph.name(state)),
            values,
        });
    }
}
