//! The generated `posed.v1` gRPC types (from `proto/posed/v1/posed.proto`).

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("posed.v1");

/// Encoded `FileDescriptorSet` of posed.v1, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/posed_v1_descriptor.bin"));
