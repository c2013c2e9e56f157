//! fakecloud: an in-memory EC2 that behaves like the real one, driven by simulated time and a seeded RNG.
//!
//! It implements dovetail's `Cloud` trait. The simulator's `cloud` host calls [`FakeCloud::step`] to move
//! instances through their states; everything else happens inside API calls.

pub mod catalog;
pub mod ec2;

pub use catalog::{Catalog, CatalogEntry};
pub use ec2::{CloudConfig, FakeCloud, InstanceRecord};
