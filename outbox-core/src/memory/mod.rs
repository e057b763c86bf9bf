//! An in-memory source and destination, for the core's tests and for users'
//! own tests. They keep the full source contract (leases, order per key,
//! fencing) so a test against them means something.

mod destination;
mod source;

pub use destination::{MemoryDestination, Sent};
pub use source::{MemoryDeadLetter, MemorySource};
