//! Placeholder: LocalNode (being written).
/// Node configuration.
pub struct NodeConfig;
/// The in-process node.
pub struct LocalNode;
