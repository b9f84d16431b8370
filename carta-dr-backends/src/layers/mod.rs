//! Store layers. Being written.
