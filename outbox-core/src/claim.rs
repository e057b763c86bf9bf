//! A claim: the items a source handed out together, and the identity its
//! reports carry.

use std::fmt;
use std::ops::Deref;
use std::time::Instant;

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
    leased_at: Instant,
}

impl<I> Claim<I> {
    /// A claim of `items` under `id` whose lease starts now: for a source
    /// whose lease runs from the end of the claim (an idle-in-transaction
    /// timeout, say), built as the claim returns.
    pub fn new(id: ClaimId, items: Vec<I>) -> Self {
        Self::leased_since(id, items, Instant::now())
    }

    /// A claim of `items` under `id` whose lease started at `leased_at`
    /// (for a source that writes the lease's end into its rows, when it
    /// read the clock for it).
    pub fn leased_since(id: ClaimId, items: Vec<I>, leased_at: Instant) -> Self {
        Self {
            id,
            items,
            leased_at,
        }
    }

    /// When the lease began: the relay starts no send later than the lease
    /// allows from here. A claim statement that took seconds under load does
    /// not eat into the time to send when the lease starts as it returns.
    pub fn leased_at(&self) -> Instant {
        self.leased_at
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
