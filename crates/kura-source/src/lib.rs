//! kura-source
