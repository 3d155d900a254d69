//! kura's HTTP API contract.
//!
//! Every request body and query string the server accepts and every response body it sends is
//! a type here; the server's OpenAPI document is generated from these types, and the CLI
//! reads and writes the same ones, whichever transport it uses. They are API types, not
//! catalog rows: the conversions in [`convert`] are the one place where the engine's
//! structures meet the contract, so a change inside the catalog cannot change the API
//! unnoticed.

pub mod call;
pub mod convert;
pub mod request;
pub mod response;

pub use call::{Call, HttpCall};
pub use request::*;
pub use response::*;
