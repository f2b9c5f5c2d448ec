//! Generated gRPC types of `proto/order.proto` (package `order`).
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

tonic::include_proto!("order");

/// The admin API (`proto/admin.proto`, package `order.admin`).
pub mod admin {
    tonic::include_proto!("order.admin");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("order_descriptor");
