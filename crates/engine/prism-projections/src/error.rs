//! [`Unprojectable`]: an event that decoded fine but that a read model cannot apply, such as
//! a payment for an order whose placement the view never saw. Permanent: the event is
//! dead-lettered and its aggregate parked behind it.

/// Why an event cannot be applied to a read model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unprojectable(pub String);

impl Unprojectable {
    /// An error with this explanation.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}
