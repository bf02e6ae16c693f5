//! What a "not found" / "already exists" error is about, so callers can
//! branch on the kind and operators read one precise sentence.

use std::fmt;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Rack(String),
    Node(String),
    /// A rack's share of a network (`racknets/<network>/<rack>`).
    Binding {
        rack: String,
        network: String,
    },
    Block {
        network: String,
        first: Ipv4Addr,
    },
}

impl Object {
    /// The sentence for a missing object.
    pub fn not_found(&self) -> String {
        match self {
            Object::Node(n) => format!("node {n:?} is not registered"),
            Object::Binding { rack, network } => {
                format!("rack {rack:?} is not bound to network {network:?}")
            }
            other => format!("{other} not found"),
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Rack(n) => write!(f, "rack {n:?}"),
            Object::Node(n) => write!(f, "node {n:?}"),
            Object::Binding { rack, network } => {
                write!(f, "binding of rack {rack:?} to network {network:?}")
            }
            Object::Block { network, first } => write!(f, "block {first} of network {network:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object() {
        assert_eq!(
            Object::Rack("r1".into()).not_found(),
            "rack \"r1\" not found"
        );
        assert_eq!(
            Object::Node("n1".into()).not_found(),
            "node \"n1\" is not registered"
        );
        let b = Object::Binding {
            rack: "r1".into(),
            network: "prod".into(),
        };
        assert_eq!(
            b.not_found(),
            "rack \"r1\" is not bound to network \"prod\""
        );
        assert_eq!(b.to_string(), "binding of rack \"r1\" to network \"prod\"");
        let b = Object::Block {
            network: "prod".into(),
            first: Ipv4Addr::new(10, 0, 0, 16),
        };
        assert_eq!(
            b.not_found(),
            "block 10.0.0.16 of network \"prod\" not found"
        );
    }
}
