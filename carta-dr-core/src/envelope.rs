//! The stored-object envelope. (Being written.)
