//! A deliberately small HTTP/1.1 implementation over tokio `TcpStream` that
//! keeps exact bytes: header order, name case, non-UTF-8 values, and bodies
//! that never completed. Used by the testbed's servers and by the raw client.

pub mod server;
pub mod wire;
