//! Each backend in its own folder (depending on the domain, never on the seams or the
//! worker), behind the seams [order log](crate::order_log::Publisher),
//! [`Store`](crate::store::Store) and [`Registry`](crate::rules::registry::Registry):
//! - [`embedded`]: one redb database: order log, results, registry, dead letters;
//! - [`kafka`]: the order topic (producer, consumer, topics) and the dead-letter topic;
//! - [`redis`]: results (Go-compatible keys) and the registry.

pub mod embedded;
pub mod kafka;
pub mod redis;
