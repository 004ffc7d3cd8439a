//! keel control-plane API: the protobuf/gRPC and REST types shared by the
//! master, the volume servers and the `keel` CLI.
#![forbid(unsafe_code)]
