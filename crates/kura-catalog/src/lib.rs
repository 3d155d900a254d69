//! kura-catalog
