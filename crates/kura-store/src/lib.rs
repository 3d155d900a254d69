//! kura-store
