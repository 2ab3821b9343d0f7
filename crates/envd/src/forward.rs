//! Placeholder: port forwarding socket (being written).
