//! Placeholder: listeners (being written).
