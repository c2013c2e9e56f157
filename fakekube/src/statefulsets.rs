//! The StatefulSet controller: pods named by ordinal (`web-0`, `web-1`, ...), each with its own claims from
//! `volumeClaimTemplates` (`data-web-0`), kept when the pod goes so a replacement finds its volume again;
//! `OrderedReady` creates one pod at a time once the ones before it run and removes from the highest
//! ordinal down, `Parallel` does both at once.

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::store::Store;

/// A pod that runs and is Ready.
fn running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn claim_name(template: &Value, set: &str, ordinal: usize) -> String {
    format!(
        "{}-{set}-{ordinal}",
        template["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The pod for one ordinal: the template's, named and labelled by ordinal, mounting its claims.
fn pod_for(set: &Value, ordinal: usize) -> Value {
    let (ns, name) = crate::store::ns_name(set);
    let template = &set["spec"]["template"];
    let pod_name = format!("{name}-{ordinal}");
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["name"] = json!(pod_name);
    meta["namespace"] = json!(ns);
    meta["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
    meta["labels"]["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
        "uid": set["metadata"]["uid"], "controller": true}]);
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(pod_name);
    if let Some(service) = set["spec"]["serviceName"].as_str() {
        spec["subdomain"] = json!(service);
    }
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for t in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let volume = t["metadata"]["name"].as_str().unwrap_or_default();
        volumes.retain(|v| v["name"] != volume);
        volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim_name(t, &name, ordinal)}}));
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}})
}

/// Create the ordinal's missing claims (labelled with the set's selector labels).
fn ensure_claims(st: &mut Store, set: &Value, ordinal: usize, now: Timestamp) {
    let (ns, name) = crate::store::ns_name(set);
    for t in set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let claim = claim_name(t, &name, ordinal);
        if st.get("PersistentVolumeClaim", &ns, &claim).is_some() {
            continue;
        }
        let mut meta = t["metadata"].clone();
        meta["name"] = json!(claim);
        meta["namespace"] = json!(ns);
        for (k, v) in set["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            meta["labels"][k] = v.clone();
        }
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
            "spec": t["spec"], "status": {"phase": "Pending"}});
        let _ = st.create("PersistentVolumeClaim", pvc, now);
    }
}

/// One pass over every StatefulSet; returns what it did, for the trace.
pub fn reconcile(st: &mut Store, now: Timestamp) -> Vec<String> {
    let mut notes = Vec::new();
    for set in st.list("StatefulSet") {
        if !set["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let (ns, name) = crate::store::ns_name(&set);
        let uid = set["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let want = set["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
        let parallel = set["spec"]["podManagementPolicy"] == "Parallel";
        // Its pods by ordinal; a failed or finished one is deleted to be made again.
        let mut pods: Vec<(usize, Value)> = Vec::new();
        for p in st.iter("Pod") {
            let owned = p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|o| o["uid"] == uid.as_str()));
            let ordinal = p["metadata"]["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(&format!("{name}-")))
                .and_then(|o| o.parse::<usize>().ok());
            if let (true, Some(o)) = (owned, ordinal) {
                pods.push((o, p.clone()));
            }
        }
        for (_, p) in &pods {
            if matches!(p["status"]["phase"].as_str(), Some("Failed" | "Succeeded"))
                && p["metadata"]["deletionTimestamp"].is_null()
            {
                let (pns, pname) = crate::store::ns_name(p);
                let _ = st.delete("Pod", &pns, &pname, now);
            }
        }
        let exists = |o: usize| pods.iter().any(|(i, _)| *i == o);
        let mut created = Vec::new();
        for ordinal in 0..want {
            if exists(ordinal) {
                continue;
            }
            // OrderedReady: every pod before this one must run and be Ready first.
            if !parallel
                && !(0..ordinal).all(|o| pods.iter().any(|(i, p)| *i == o && running_and_ready(p)))
            {
                break;
            }
            ensure_claims(st, &set, ordinal, now);
            if st.create("Pod", pod_for(&set, ordinal), now).is_ok() {
                created.push(ordinal);
            }
            if !parallel {
                break;
            }
        }
        if !created.is_empty() {
            let list: Vec<String> = created.iter().map(|o| format!("{name}-{o}")).collect();
            notes.push(format!(
                "statefulset/{ns}/{name} created {}",
                list.join(", ")
            ));
        }
        // Scale down from the highest ordinal; OrderedReady one at a time, after the rest are Ready.
        let mut extra: Vec<&(usize, Value)> = pods
            .iter()
            .filter(|(o, p)| *o >= want && p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        extra.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        let all_ready = pods
            .iter()
            .filter(|(o, _)| *o < want)
            .all(|(_, p)| running_and_ready(p));
        let terminating = pods
            .iter()
            .any(|(o, p)| *o >= want && !p["metadata"]["deletionTimestamp"].is_null());
        let take = if parallel {
            extra.len()
        } else if all_ready && !terminating {
            1
        } else {
            0
        };
        for (o, p) in extra.into_iter().take(take) {
            let (pns, pname) = crate::store::ns_name(p);
            if st.delete("Pod", &pns, &pname, now).is_ok() {
                notes.push(format!("statefulset/{ns}/{name} deleted {name}-{o}"));
            }
        }
        let ready = pods.iter().filter(|(_, p)| running_and_ready(p)).count();
        let status = json!({"status": {"replicas": pods.len(), "readyReplicas": ready}});
        if set["status"]["replicas"] != status["status"]["replicas"]
            || set["status"]["readyReplicas"] != status["status"]["readyReplicas"]
        {
            let _ = st.patch("StatefulSet", &ns, &name, &status, true);
        }
    }
    notes
}
