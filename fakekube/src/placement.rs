//! Invariants of where pods run, checked by the store at every binding, whoever binds: no node's bound pods
//! request more than its allocatable, no pod is bound to a node whose NoSchedule/NoExecute taints it does not
//! tolerate or whose labels its selector and required node affinity refuse, and no two pods on a node claim
//! the same host port. It keeps its own tally of what is bound where, apart from the scheduler's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::scheduler::{host_ports, node_affinity_admits, ports_clash, requests, tolerates};

#[derive(Default)]
pub struct Placement {
    /// node name -> (namespace, name) of the pods bound to it.
    bound: BTreeMap<String, BTreeSet<(String, String)>>,
    pub violations: Vec<String>,
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

impl Placement {
    /// A pod was written. A binding not seen before is checked against the node and the pods already bound
    /// there, whose objects `lookup` returns.
    pub fn written<'a>(
        &mut self,
        pod: &Value,
        node: Option<&Value>,
        lookup: impl Fn(&str, &str) -> Option<&'a Value>,
    ) {
        let Some(node_name) = pod["spec"]["nodeName"].as_str() else {
            return;
        };
        let (ns, name) = crate::store::ns_name(pod);
        let key = (ns.clone(), name.clone());
        if self.bound.get(node_name).is_some_and(|s| s.contains(&key)) {
            return; // not a new binding (nodeName is immutable once set)
        }
        let at = format!("pod {ns}/{name} bound to node {node_name}");
        let others: Vec<&Value> = self
            .bound
            .get(node_name)
            .into_iter()
            .flatten()
            .filter_map(|(ns, name)| lookup(ns, name))
            .filter(|p| !terminal(p))
            .collect();
        self.bound
            .entry(node_name.to_string())
            .or_default()
            .insert((ns, name));
        // A node that does not exist: the pod garbage collector deletes the pod; nothing runs anywhere.
        let Some(node) = node else { return };
        for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
            let hard = matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"));
            if hard && !tolerates(pod, taint) {
                self.violations.push(format!(
                    "{at} without tolerating its taint {}:{}",
                    taint["key"].as_str().unwrap_or_default(),
                    taint["effect"].as_str().unwrap_or_default()
                ));
            }
        }
        if !node_affinity_admits(pod, node) {
            self.violations.push(format!(
                "{at} whose labels its nodeSelector / required node affinity refuse"
            ));
        }
        let mine = host_ports(pod);
        for p in &mine {
            if others
                .iter()
                .any(|o| host_ports(o).iter().any(|q| ports_clash(p, q)))
            {
                self.violations.push(format!(
                    "{at} clashing on host port {}/{} with a pod already there",
                    p.2, p.0
                ));
            }
        }
        let mut total = requests(pod);
        for o in &others {
            for (k, v) in requests(o) {
                *total.entry(k).or_default() += v;
            }
        }
        for (res, want) in total {
            let have = node["status"]["allocatable"][&res]
                .as_str()
                .and_then(crate::quantity::milli)
                .unwrap_or(0);
            if want > have {
                self.violations.push(format!(
                    "{at}: its pods request {want}m {res}, the node has {have}m allocatable"
                ));
            }
        }
    }

    /// A pod left the store.
    pub fn removed(&mut self, pod: &Value) {
        if let Some(node) = pod["spec"]["nodeName"].as_str()
            && let Some(set) = self.bound.get_mut(node)
        {
            set.remove(&crate::store::ns_name(pod));
        }
    }
}
