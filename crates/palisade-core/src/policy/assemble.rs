//! [`FromPolicy`]: each part of a guard configures itself from the file.

use super::{PolicyError, WorkloadPolicy};

/// A part of a guard (an authenticator today; sign-in and upstream
/// credentials tomorrow) that configures itself from the policy documents
/// that apply to a workload. [`GuardBuilder::authenticator_from`](crate::GuardBuilder::authenticator_from)
/// takes any of them, so a policy file reaches a running guard one way.
pub trait FromPolicy: Sized {
    /// Builds the part from the workload's documents: `None` when they do
    /// not configure it (no `RequestAuthentication` for the JWT
    /// authenticator, say).
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file, document and field of a value that
    /// cannot be used.
    fn from_policy(policy: &WorkloadPolicy<'_>) -> Result<Option<Self>, PolicyError>;
}
