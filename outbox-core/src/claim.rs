//! A claim: the items a source handed out together, and the identity its
//! reports carry.

use std::fmt;
use std::ops::Deref;

use uuid::Uuid;

/// The identity of one claim, new for every claim.
///
/// Fencing is per claim: a report names the claim it belongs to, and a
/// source changes nothing for a claim it no longer holds, even when the same
/// process has since claimed the same rows again (a stall past the lease,
/// or a claim's connection ended while its batch was still publishing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimId(Uuid);

impl ClaimId {
    /// A new identity, unique across processes (a UUIDv7).
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The identity as a UUID, for a source that writes it into its rows.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for ClaimId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ClaimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What [`Source::claim`](crate::Source::claim) returns: the items, in the
/// order the relay must keep per key, and the claim's identity. It reads as
/// a slice of its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<I> {
    id: ClaimId,
    items: Vec<I>,
}

impl<I> Claim<I> {
    /// A claim of `items` under `id`.
    pub fn new(id: ClaimId, items: Vec<I>) -> Self {
        Self { id, items }
    }

    /// A claim of nothing.
    pub fn empty() -> Self {
        Self::new(ClaimId::new(), Vec::new())
    }

    /// The identity every report about these items names.
    pub fn id(&self) -> ClaimId {
        self.id
    }

    /// The items, leaving the identity behind.
    pub fn into_items(self) -> Vec<I> {
        self.items
    }
}

impl<I> Deref for Claim<I> {
    type Target = [I];

    fn deref(&self) -> &[I] {
        &self.items
    }
}
