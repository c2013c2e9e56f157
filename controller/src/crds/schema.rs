//! Schema pieces the derive cannot say on its own: the CEL rules shared by NodePool and NodeClaim
//! requirements, and a template's label map with Kubernetes' label-value syntax and Karpenter's restrictions.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

/// Rules on a whole requirements list; a NodePool's may not require `karpenter.sh/nodepool` (its own name
/// is implied), a NodeClaim's carries it.
pub fn requirement_rules(nodepool: bool) -> Value {
    let mut rules = vec![
        json!({"rule": "self.all(r, r.operator == 'In' ? r.values.size() != 0 : true)",
               "message": "a requirement with operator 'In' needs at least one value"}),
        json!({"rule": "self.all(r, r.operator in ['Gt', 'Lt', 'Gte', 'Lte'] ? (r.values.size() == 1 && int(r.values[0]) >= 0) : true)",
               "message": "a requirement with operator 'Gt', 'Lt', 'Gte' or 'Lte' needs exactly one value, a non-negative integer"}),
        json!({"rule": "self.all(r, (r.operator == 'In' && has(r.minValues)) ? r.values.size() >= r.minValues : true)",
               "message": "a requirement with 'minValues' needs at least that many 'values'"}),
    ];
    if nodepool {
        rules.push(
            json!({"rule": "self.all(r, r.key != 'karpenter.sh/nodepool')",
                          "message": "the label karpenter.sh/nodepool is restricted"}),
        );
    }
    Value::Array(rules)
}

/// `spec.template.metadata.labels`: values are label values; no label of the karpenter.sh domain but the
/// capacity type, nor the pool's own name or the hostname.
pub fn template_labels(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 100,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
        },
        "x-kubernetes-validations": [
            {"rule": "self.all(k, k in ['karpenter.sh/capacity-type', 'karpenter.sh/nodepool'] || !k.find('^([^/]+)').endsWith('karpenter.sh'))",
             "message": "the label domain karpenter.sh is restricted"},
            {"rule": "self.all(k, k != 'karpenter.sh/nodepool')",
             "message": "the label karpenter.sh/nodepool is restricted"},
            {"rule": "self.all(k, k != 'kubernetes.io/hostname')",
             "message": "the label kubernetes.io/hostname is restricted"}
        ]
    })
}

/// A budget's `reasons`: Karpenter's three voluntary disruption reasons, each at most once.
pub fn budget_reasons(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 50,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "enum": ["Underutilized", "Empty", "Drifted"]}
    })
}

/// Tags of a selector term: at most 20, neither key nor value empty.
pub fn selector_tags(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 20,
        "additionalProperties": {"type": "string"},
        "x-kubernetes-validations": [
            {"rule": "self.all(k, k != '' && self[k] != '')", "message": "empty tag keys or values aren't supported"}
        ]
    })
}

/// A Kubernetes quantity, as the API server's schema for one reads it.
const QUANTITY: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";
/// The kubelet's eviction signals that `evictionHard` / `evictionSoft` may name.
pub const EVICTION_SIGNALS: [&str; 6] = [
    "memory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "pid.available",
];

fn signals_rule(field: &str) -> Value {
    let list: Vec<String> = EVICTION_SIGNALS.iter().map(|s| format!("'{s}'")).collect();
    json!({
        "rule": format!("self.all(s, s in [{}])", list.join(", ")),
        "message": format!("the keys of {field} are eviction signals: {}", EVICTION_SIGNALS.join(", "))
    })
}

/// `kubeReserved` / `systemReserved`: non-negative quantities of cpu, memory, ephemeral-storage or pid.
pub fn reserved(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": QUANTITY},
        "x-kubernetes-validations": [
            {"rule": "self.all(r, r in ['cpu', 'memory', 'ephemeral-storage', 'pid'])",
             "message": "only cpu, memory, ephemeral-storage and pid can be reserved"},
            {"rule": "self.all(r, !self[r].startsWith('-'))",
             "message": "a reservation cannot be negative"}
        ]
    })
}

/// A NodeOverlay's `capacity`: quantities of extended resources only.
pub fn overlay_capacity(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": QUANTITY},
        "x-kubernetes-validations": [
            {"rule": "self.all(x, !(x in ['cpu', 'memory', 'ephemeral-storage', 'pods']))",
             "message": "invalid resource restricted"}
        ]
    })
}

/// A CapacityBuffer's `limits`: a resource list (integer or quantity string per resource), as
/// Kubernetes' `ResourceList` schema reads.
pub fn buffer_limits(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,
            "x-kubernetes-int-or-string": true
        }
    })
}

/// `evictionHard` / `evictionSoft`: a percentage or a quantity per eviction signal.
pub fn eviction_thresholds(_: &mut SchemaGenerator) -> Schema {
    let pattern = format!(
        r"^((\d{{1,2}}(\.\d{{1,2}})?|100(\.0{{1,2}})?)%|{})$",
        QUANTITY.trim_start_matches('^').trim_end_matches('$')
    );
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "pattern": pattern},
        "x-kubernetes-validations": [signals_rule("an eviction threshold map")]
    })
}

/// `evictionSoftGracePeriod`: a duration per eviction signal.
pub fn eviction_grace_periods(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "x-kubernetes-validations": [signals_rule("evictionSoftGracePeriod")]
    })
}

/// Rules across an EC2NodeClass spec: exactly one of role / instanceProfile; an alias and `amiFamily` agree;
/// `amiFamily` is needed when no alias names the family.
pub fn ec2nodeclass_rules() -> Value {
    let mut rules = vec![json!({
        "rule": "has(self.role) != has(self.instanceProfile)",
        "message": "set exactly one of 'role' and 'instanceProfile'"
    })];
    for (alias, family) in [
        ("al2", "AL2"),
        ("al2023", "AL2023"),
        ("bottlerocket", "Bottlerocket"),
        ("windows2019", "Windows2019"),
        ("windows2022", "Windows2022"),
        ("windows2025", "Windows2025"),
    ] {
        rules.push(json!({
            "rule": format!("!has(self.amiFamily) || (self.amiSelectorTerms.exists(t, has(t.alias) && t.alias.find('^[^@]+') == '{alias}') ? self.amiFamily in ['Custom', '{family}'] : true)"),
            "message": format!("with an {alias} alias, amiFamily (if set) must be '{family}' or 'Custom'")
        }));
    }
    rules.push(json!({
        "rule": "self.amiSelectorTerms.exists(t, has(t.alias)) || has(self.amiFamily)",
        "message": "amiFamily is required when no amiSelectorTerms alias names the family"
    }));
    Value::Array(rules)
}
