//! Message and flow-control limits of the internal API, shared by its
//! clients and servers.

/// Largest message accepted on the internal API (a sibling set with many
/// large siblings can exceed tonic's 4 MiB default).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 flow-control windows: one stream carries many operations, so its
/// window must hold many values in flight at once.
pub const STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// See [`STREAM_WINDOW_BYTES`].
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
