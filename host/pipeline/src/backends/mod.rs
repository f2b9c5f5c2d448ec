//! Each backend in its own folder, behind the seams [`OrderLog`](crate::order_log),
//! [`Store`](crate::store::Store) and [`Registry`](crate::rules::registry::Registry):
//! - [`embedded`]: one redb database: order log, results, registry, dead letters;
//! - [`kafka`]: the order topic (producer, consumer group worker) and the dead-letter topic;
//! - [`redis`]: results (Go-compatible keys) and the registry.

pub mod embedded;
pub mod kafka;
pub mod redis;
