//! Branch network interfaces per instance type (security groups for pods), which EC2's API does not report:
//! the VPC resource controller's limits, read from the catalog facts shipped in `data/`.

const CATALOG: &str = include_str!("../../../data/ec2-instance-types.csv");

/// How many `vpc.amazonaws.com/pod-eni` a node of this type offers (0: it cannot trunk, or is unknown).
pub fn branch_interfaces(instance_type: &str) -> u32 {
    let mut lines = CATALOG.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let Some(column) = header.iter().position(|h| *h == "branch_enis") else {
        return 0;
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&instance_type))
        .and_then(|cells| cells.get(column)?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn trunking_types_have_branch_interfaces_and_others_none() {
        assert_eq!(super::branch_interfaces("m5.large"), 9);
        assert_eq!(super::branch_interfaces("t3.nano"), 0);
        assert_eq!(super::branch_interfaces("no.such-type"), 0);
    }
}
