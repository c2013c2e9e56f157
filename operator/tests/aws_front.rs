//! Dovetail's aws-sdk adapter against fakecloud's HTTP front on 127.0.0.1: every `Cloud` call made over the
//! wire answers what the same call made on the fake directly answers (so neither the adapter's mapping nor
//! the front's protocol loses a field), and EC2's, SQS's and SSM's error codes arrive as the seam's.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dovetail::aws::cloud::{
    BlockDevice, CapacityReservationQuery, CapacityReservationSpec, CapacityType, Cloud,
    CreateFleetRequest, DescribeInstancesRequest, FleetOverride, ImageQuery, InstanceMetadata,
    InstanceState, LaunchTemplateData, OnDemandStrategy, PrimaryInterface, ReservationType,
    TagFilter,
};
use dovetail::clock::SystemClock;
use dovetail::journal::Journal;
use dovetail::metrics::Metrics;
use dovetail_operator::aws::AwsCloud;
use fakecloud::http::AwsFront;
use fakecloud::{Catalog, CloudConfig, FakeCloud};

struct Silent;
impl Journal for Silent {
    fn record(&self, _: &'static str, _: String) {}
}

fn fake() -> FakeCloud {
    let config = CloudConfig {
        api_latency: (Duration::from_millis(1), Duration::from_millis(2)),
        visibility_lag: (Duration::ZERO, Duration::ZERO),
        launch_latency: (Duration::from_millis(10), Duration::from_millis(10)),
        cluster_name: "wire".into(),
        // Every type in every zone, so the reservations' types are offered where they are.
        offering_probability: 1.0,
        capacity_reservations: vec![
            fakecloud::reservations::ReservationSpec {
                id: Some("cr-0wire00000000001".into()),
                instance_type: "m5.large".into(),
                zone: "us-east-1a".into(),
                count: 2,
                instance_match_criteria: "targeted".into(),
                kind: dovetail::aws::cloud::ReservationType::Default,
                owner_id: "123456789012".into(),
                tags: tags(&[("purpose", "sale")]),
                starts_after: Duration::ZERO,
                lasts: None,
            },
            fakecloud::reservations::ReservationSpec {
                id: Some("cr-0b10c0000000001".into()),
                instance_type: "p3.8xlarge".into(),
                zone: "us-east-1a".into(),
                count: 1,
                instance_match_criteria: "targeted".into(),
                kind: dovetail::aws::cloud::ReservationType::CapacityBlock,
                owner_id: "123456789012".into(),
                tags: tags(&[("purpose", "training")]),
                starts_after: Duration::ZERO,
                lasts: Some(Duration::from_secs(3 * 3600)),
            },
        ],
        ..CloudConfig::default()
    };
    FakeCloud::new(
        config,
        Catalog::builtin(),
        7,
        Arc::new(SystemClock),
        Arc::new(Silent),
    )
}

/// The fake served on a free loopback port; the adapter pointed at it.
async fn served(cloud: &FakeCloud) -> (AwsCloud, aws_config::SdkConfig) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(fakecloud::http::serve(
        listener,
        AwsFront::new(cloud.clone()),
    ));
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "sim", "sim", None, None, "test",
        ))
        .load()
        .await;
    (AwsCloud::new(&config, Arc::new(Metrics::default())), config)
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_describe_over_the_wire_answers_what_the_fake_does() {
    let cloud = fake();
    let (wire, _) = served(&cloud).await;

    let direct = cloud.describe_instance_types().await.unwrap();
    let over = wire.describe_instance_types().await.unwrap();
    // More than one page of 100: the adapter followed EC2's tokens.
    assert!(direct.len() > 100, "{}", direct.len());
    assert_eq!(over, direct);

    let mut direct = cloud.describe_instance_type_offerings().await.unwrap();
    let mut over = wire.describe_instance_type_offerings().await.unwrap();
    direct.sort_by(|a, b| (&a.instance_type, &a.zone).cmp(&(&b.instance_type, &b.zone)));
    over.sort_by(|a, b| (&a.instance_type, &a.zone).cmp(&(&b.instance_type, &b.zone)));
    assert_eq!(over, direct);

    let direct = cloud.describe_spot_price_history().await.unwrap();
    let over = wire.describe_spot_price_history().await.unwrap();
    assert_eq!(over.len(), direct.len());
    for (o, d) in over.iter().zip(&direct) {
        assert_eq!((&o.instance_type, &o.zone), (&d.instance_type, &d.zone));
        assert!((o.price - d.price).abs() < 1e-9, "{o:?} vs {d:?}");
    }

    assert_eq!(
        wire.describe_subnets().await.unwrap(),
        cloud.describe_subnets().await.unwrap()
    );
    let discovery = TagFilter {
        tags: tags(&[("karpenter.sh/discovery", "wire")]),
        ..Default::default()
    };
    let groups = wire
        .describe_security_groups(discovery.clone())
        .await
        .unwrap();
    assert!(!groups.is_empty());
    assert_eq!(
        groups,
        cloud.describe_security_groups(discovery).await.unwrap()
    );
    let by_name = TagFilter {
        names: vec!["default".into()],
        ..Default::default()
    };
    assert_eq!(
        wire.describe_security_groups(by_name.clone())
            .await
            .unwrap(),
        cloud.describe_security_groups(by_name).await.unwrap()
    );

    // Amazon's EKS images by name pattern: the adapter asks with IncludeDeprecated, so the lists agree.
    let query = ImageQuery {
        filter: TagFilter {
            names: vec!["amazon-eks-node-al2023-x86_64-standard-1.33-*".into()],
            ..Default::default()
        },
        owners: vec!["amazon".into()],
    };
    let images = wire.describe_images(query.clone()).await.unwrap();
    assert!(!images.is_empty());
    let mut direct = cloud.describe_images(query).await.unwrap();
    direct.retain(|i| glob_name(&i.name));
    assert_eq!(images, direct);

    // Capacity reservations as Karpenter queries them: by id (no MaxResults), by tags with `*`, by match
    // criteria; an unknown id answers NotFound.
    for query in [
        CapacityReservationQuery {
            ids: vec!["cr-0wire00000000001".into()],
            ..Default::default()
        },
        CapacityReservationQuery {
            tags: tags(&[("purpose", "*")]),
            owner_id: Some("123456789012".into()),
            ..Default::default()
        },
        CapacityReservationQuery {
            instance_match_criteria: Some("targeted".into()),
            tags: tags(&[("purpose", "training")]),
            ..Default::default()
        },
    ] {
        let over = wire
            .describe_capacity_reservations(query.clone())
            .await
            .unwrap();
        assert!(!over.is_empty(), "{query:?}");
        assert_eq!(
            over,
            cloud.describe_capacity_reservations(query).await.unwrap()
        );
    }
    assert_eq!(
        wire.describe_capacity_reservations(CapacityReservationQuery {
            ids: vec!["cr-0nothere".into()],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code,
        "InvalidCapacityReservationId.NotFound"
    );

    // SSM: a published parameter, and a missing one by its code.
    let name = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id";
    assert_eq!(
        wire.get_parameter(name).await.unwrap(),
        cloud.get_parameter(name).await.unwrap()
    );
    assert_eq!(
        wire.get_parameter("/nope").await.unwrap_err().code,
        "ParameterNotFound"
    );
}

fn glob_name(name: &str) -> bool {
    dovetail::aws::cloud::glob("amazon-eks-node-al2023-x86_64-standard-1.33-*", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_terminations_and_the_queue_over_the_wire() {
    let cloud = fake();
    let (wire, _) = served(&cloud).await;
    let subnet = cloud.describe_subnets().await.unwrap()[0].clone();
    let group = cloud
        .describe_security_groups(TagFilter::default())
        .await
        .unwrap()[0]
        .clone();

    // A launch template with every field the adapter sends arrives whole.
    let data = LaunchTemplateData {
        image_id: "ami-0123456789abcdef0".into(),
        security_group_ids: vec![group.id.clone()],
        block_devices: vec![BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_size_gib: Some(80),
            volume_type: Some("gp3".into()),
            iops: Some(3000),
            throughput: Some(125),
            encrypted: Some(true),
            kms_key_id: Some("arn:aws:kms:us-east-1:123456789012:key/k".into()),
            snapshot_id: None,
            delete_on_termination: Some(true),
            volume_initialization_rate: Some(300),
        }],
        user_data: "[settings.kubernetes]\ncluster-name = \"wire\"\n".into(),
        instance_profile: "KarpenterNodeInstanceProfile".into(),
        tags: tags(&[
            ("karpenter.sh/nodepool", "default"),
            ("eks:eks-cluster-name", "wire"),
        ]),
        metadata: InstanceMetadata {
            http_put_response_hop_limit: 2,
            ..InstanceMetadata::default()
        },
        detailed_monitoring: true,
        network_interface: None,
        nested_virtualization: None,
        capacity_reservation: None,
        market_type: None,
    };
    let lt = wire
        .create_launch_template("dovetail/wire/1".into(), data.clone())
        .await
        .unwrap();
    assert!(lt.id.starts_with("lt-"), "{lt:?}");
    let stored = cloud
        .describe_launch_templates(vec!["dovetail/wire/1".into()])
        .await
        .unwrap();
    assert_eq!(stored[0].data, data);
    // The primary-interface form: groups on the interface, connection tracking and prefixes kept.
    let with_interface = LaunchTemplateData {
        network_interface: Some(PrimaryInterface {
            associate_public_ip_address: Some(false),
            ipv4_prefix_count: Some(1),
            connection_tracking: Some((Some(432000), None, Some(30))),
        }),
        nested_virtualization: Some("enabled".into()),
        ..data.clone()
    };
    wire.create_launch_template("dovetail/wire/2".into(), with_interface.clone())
        .await
        .unwrap();
    let stored = cloud
        .describe_launch_templates(vec!["dovetail/wire/2".into()])
        .await
        .unwrap();
    assert_eq!(stored[0].data, with_interface);
    assert_eq!(
        wire.create_launch_template("dovetail/wire/1".into(), data.clone())
            .await
            .unwrap_err()
            .code,
        "InvalidLaunchTemplateName.AlreadyExistsException"
    );
    assert_eq!(
        wire.describe_launch_templates(vec!["dovetail/wire/missing".into()])
            .await
            .unwrap_err()
            .code,
        "InvalidLaunchTemplateName.NotFoundException"
    );

    // CreateFleet: two instances across the overrides, read back with their addresses and images.
    let fleet = wire
        .create_fleet(CreateFleetRequest {
            client_token: "token-1".into(),
            context: None,
            capacity_type: CapacityType::OnDemand,
            reservation: None,
            on_demand_strategy: OnDemandStrategy::LowestPrice,
            overrides: ["m5.large", "m5.xlarge"]
                .iter()
                .map(|t| FleetOverride {
                    launch_template_name: "dovetail/wire/1".into(),
                    instance_type: t.to_string(),
                    subnet_id: subnet.id.clone(),
                    zone: subnet.zone.clone(),
                    priority: None,
                })
                .collect(),
            target_capacity: 2,
            tags: tags(&[
                ("karpenter.sh/nodeclaim", "default-abc"),
                ("eks:eks-cluster-name", "wire"),
            ]),
        })
        .await
        .unwrap();
    assert_eq!(fleet.instances.len(), 2, "{fleet:?}");
    for i in &fleet.instances {
        assert_eq!(i.zone, subnet.zone);
        assert_eq!(i.image_id, "ami-0123456789abcdef0");
        assert!(i.private_ip.starts_with("10."), "{i:?}");
        assert_eq!(i.tags["karpenter.sh/nodeclaim"], "default-abc");
    }
    let ids: Vec<String> = fleet.instances.iter().map(|i| i.id.clone()).collect();
    let by_tag = wire
        .describe_instances(DescribeInstancesRequest {
            tags: tags(&[("karpenter.sh/nodeclaim", "default-abc")]),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut found: Vec<String> = by_tag.instances.iter().map(|i| i.id.clone()).collect();
    found.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(found, want);

    // The on-demand allocation strategy travels in OnDemandOptions: prioritized follows the priorities
    // (the pricier type first here), lowest-price the list prices.
    for (strategy, want) in [
        (OnDemandStrategy::Prioritized, "m5.xlarge"),
        (OnDemandStrategy::LowestPrice, "m5.large"),
    ] {
        let out = wire
            .create_fleet(CreateFleetRequest {
                client_token: format!("token-{strategy:?}"),
                context: None,
                capacity_type: CapacityType::OnDemand,
                reservation: None,
                on_demand_strategy: strategy,
                overrides: [("m5.large", 1.0), ("m5.xlarge", 0.0)]
                    .iter()
                    .map(|(t, p)| FleetOverride {
                        launch_template_name: "dovetail/wire/1".into(),
                        instance_type: t.to_string(),
                        subnet_id: subnet.id.clone(),
                        zone: subnet.zone.clone(),
                        priority: Some(*p),
                    })
                    .collect(),
                target_capacity: 1,
                tags: tags(&[("karpenter.sh/nodeclaim", "default-strategy")]),
            })
            .await
            .unwrap();
        assert_eq!(out.instances[0].instance_type, want, "{strategy:?}");
    }

    // A reserved launch: the template targets the reservation (and says so on the wire), the instance
    // comes back in it.
    let in_a = cloud
        .describe_subnets()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.zone == "us-east-1a")
        .unwrap();
    let targeted = LaunchTemplateData {
        capacity_reservation: Some(CapacityReservationSpec {
            preference: "capacity-reservations-only".into(),
            target_id: Some("cr-0b10c0000000001".into()),
        }),
        market_type: Some("capacity-block".into()),
        ..data.clone()
    };
    wire.create_launch_template("dovetail/wire/block".into(), targeted.clone())
        .await
        .unwrap();
    let stored = cloud
        .describe_launch_templates(vec!["dovetail/wire/block".into()])
        .await
        .unwrap();
    assert_eq!(stored[0].data, targeted);
    let block = wire
        .create_fleet(CreateFleetRequest {
            client_token: "token-block".into(),
            context: None,
            capacity_type: CapacityType::OnDemand,
            reservation: Some(ReservationType::CapacityBlock),
            on_demand_strategy: OnDemandStrategy::LowestPrice,
            overrides: vec![FleetOverride {
                launch_template_name: "dovetail/wire/block".into(),
                instance_type: "p3.8xlarge".into(),
                subnet_id: in_a.id.clone(),
                zone: in_a.zone.clone(),
                priority: None,
            }],
            target_capacity: 1,
            tags: tags(&[("karpenter.sh/nodeclaim", "training-abc")]),
        })
        .await
        .unwrap();
    assert_eq!(block.instances.len(), 1, "{block:?}");
    let i = &block.instances[0];
    assert_eq!(
        i.capacity_reservation_id.as_deref(),
        Some("cr-0b10c0000000001")
    );
    assert_eq!(i.instance_lifecycle.as_deref(), Some("capacity-block"));
    assert_eq!(
        i.capacity_reservation_preference.as_deref(),
        Some("capacity-reservations-only")
    );
    // Paging: one instance a page... EC2's minimum page is 5, and the fake says so.
    assert_eq!(
        wire.describe_instances(DescribeInstancesRequest {
            max_results: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code,
        "InvalidParameterValue"
    );
    wire.create_tags(vec![ids[0].clone()], tags(&[("team", "infra")]))
        .await
        .unwrap();
    wire.terminate_instances(vec![ids[0].clone()])
        .await
        .unwrap();
    let after = wire
        .describe_instances(DescribeInstancesRequest {
            instance_ids: vec![ids[0].clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.instances[0].state, InstanceState::ShuttingDown);
    assert_eq!(after.instances[0].tags["team"], "infra");
    assert_eq!(
        wire.terminate_instances(vec!["i-00000000000000000".into()])
            .await
            .unwrap_err()
            .code,
        cloud
            .terminate_instances(vec!["i-00000000000000000".into()])
            .await
            .unwrap_err()
            .code
    );

    // The interruption queue by name, a message in, received once, deleted, gone.
    let url = wire.queue_url("sim").await.unwrap();
    assert_eq!(url, cloud.config().queue_url);
    assert_eq!(
        wire.queue_url("other").await.unwrap_err().code,
        "AWS.SimpleQueueService.NonExistentQueue"
    );
    cloud.rebalance_recommendation(&ids[1]);
    let got = wire
        .receive_messages(&url, 10, Duration::from_secs(30))
        .await
        .unwrap();
    // The termination above put a state-change notification on the queue first; then the recommendation.
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("EC2 Instance State-change Notification") && b.contains(&ids[0])),
        "{bodies:?}"
    );
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("EC2 Instance Rebalance Recommendation") && b.contains(&ids[1])),
        "{bodies:?}"
    );
    for m in &got {
        wire.delete_message(&url, &m.receipt_handle).await.unwrap();
    }
    assert!(
        wire.receive_messages(&url, 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        wire.delete_message(&url, &got[0].receipt_handle)
            .await
            .unwrap_err()
            .code,
        "ReceiptHandleIsInvalid"
    );
}
