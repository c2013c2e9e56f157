//! The aws-sdk adapter against moto's server mode on 127.0.0.1: instance types and offerings, subnets and
//! security groups, images, SSM parameters, tags, launch templates, CreateFleet, DescribeInstances, TerminateInstances, SQS
//! receive and delete, and EC2's error codes passed through. `.ci/run` installs moto; elsewhere the test
//! skips, loudly, when it cannot start it.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dovetail::aws::cloud::ImageQuery;
use dovetail::aws::cloud::{
    BlockDevice, CapacityType, Cloud, CreateFleetRequest, DescribeInstancesRequest, FleetOverride,
    InstanceState, LaunchTemplateData, OnDemandStrategy, TagFilter,
};
use dovetail::metrics::{CLOUDPROVIDER_ERRORS, Metrics};
use dovetail_operator::aws::AwsCloud;

/// moto's server, stopped when dropped.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Option<(Moto, String)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let args = ["-H", "127.0.0.1", "-p", &port.to_string()];
    let child = Command::new("moto_server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .or_else(|_| {
            Command::new("python3")
                .args(["-m", "moto.server"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .ok()?;
    let moto = Moto(child);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((moto, format!("http://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_adapter_against_moto() {
    let Some((_moto, endpoint)) = start_moto() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto is needed for the AWS adapter test (.ci/run installs it: pip install \"moto[server]\")"
        );
        eprintln!(
            "SKIPPED: moto_server could not be started; pip install \"moto[server]\" to run this test"
        );
        return;
    };
    let config = sdk_config(&endpoint).await;
    let metrics = Arc::new(Metrics::default());
    let cloud = AwsCloud::new(&config, metrics.clone());

    // The catalog.
    let types = cloud.describe_instance_types().await.unwrap();
    let m5 = types
        .iter()
        .find(|t| t.name == "m5.large")
        .expect("m5.large is described");
    assert_eq!(
        (m5.vcpu, m5.memory_mib, m5.arch.as_str()),
        (2, 8192, "amd64")
    );
    assert!(m5.supported_usage_classes.contains(&CapacityType::Spot));
    assert!(
        types
            .iter()
            .any(|t| t.name.starts_with("m6g.") && t.arch == "arm64")
    );
    let offerings = cloud.describe_instance_type_offerings().await.unwrap();
    assert!(
        offerings
            .iter()
            .any(|o| o.instance_type == "m5.large" && o.zone == "us-east-1a")
    );
    let prices = cloud.on_demand_prices().await.unwrap();
    assert!(prices["m5.large"] > 0.05 && prices["m5.large"] < 0.2);

    // Subnets and security groups, found by the discovery tag Karpenter's docs use.
    let subnets = cloud.describe_subnets().await.unwrap();
    let subnet = subnets
        .iter()
        .find(|s| s.zone == "us-east-1a")
        .expect("moto's default VPC has a subnet in us-east-1a")
        .clone();
    assert!(subnet.available_ip_addresses > 0);
    let discovery = tags(&[("karpenter.sh/discovery", "moto-cluster")]);
    cloud
        .create_tags(vec![subnet.id.clone()], discovery.clone())
        .await
        .unwrap();
    let tagged = cloud.describe_subnets().await.unwrap();
    assert_eq!(
        tagged.iter().find(|s| s.id == subnet.id).unwrap().tags["karpenter.sh/discovery"],
        "moto-cluster"
    );
    let groups = cloud
        .describe_security_groups(TagFilter {
            names: vec!["default".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let group = groups.first().expect("the default security group").clone();
    cloud
        .create_tags(vec![group.id.clone()], discovery.clone())
        .await
        .unwrap();
    let by_tag = cloud
        .describe_security_groups(TagFilter {
            tags: discovery.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_tag.iter().map(|g| &g.id).collect::<Vec<_>>(),
        [&group.id]
    );
    let image = cloud
        .describe_images(ImageQuery::default())
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.arch == "x86_64")
        .expect("moto has x86_64 images");
    assert!(!image.owner_id.is_empty(), "{image:?}");
    let by_id = cloud
        .describe_images(ImageQuery {
            filter: TagFilter {
                ids: vec![image.id.clone()],
                ..Default::default()
            },
            owners: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(by_id, std::slice::from_ref(&image));

    // SSM GetParameter: a parameter's value (how an alias finds its image), a missing one by its code.
    aws_sdk_ssm::Client::new(&config)
        .put_parameter()
        .name("/dovetail/moto/image_id")
        .value(&image.id)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    assert_eq!(
        cloud
            .get_parameter("/dovetail/moto/image_id")
            .await
            .unwrap(),
        image.id
    );
    let missing = cloud
        .get_parameter("/dovetail/moto/missing")
        .await
        .unwrap_err();
    assert_eq!(missing.code, "ParameterNotFound");

    // Launch templates: created, found by name, a missing one named by its error code.
    let cluster_tags = tags(&[
        ("kubernetes.io/cluster/moto-cluster", "owned"),
        ("karpenter.sh/nodepool", "default"),
    ]);
    let data = LaunchTemplateData {
        image_id: image.id.clone(),
        security_group_ids: vec![group.id.clone()],
        block_devices: vec![BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_size_gib: Some(20),
            volume_type: Some("gp3".into()),
            iops: Some(3000),
            throughput: Some(125),
            encrypted: Some(true),
            delete_on_termination: Some(true),
            ..Default::default()
        }],
        user_data: "[settings.kubernetes]\ncluster-name = \"moto-cluster\"\n".into(),
        instance_profile: "KarpenterNodeInstanceProfile".into(),
        tags: cluster_tags.clone(),
        // Every launch setting an EC2NodeClass can carry, as the SDK sends it.
        metadata: dovetail::aws::cloud::InstanceMetadata {
            http_put_response_hop_limit: 2,
            ..Default::default()
        },
        detailed_monitoring: true,
        network_interface: Some(dovetail::aws::cloud::PrimaryInterface {
            associate_public_ip_address: Some(false),
            ipv4_prefix_count: None,
            connection_tracking: Some((Some(3600), None, None)),
        }),
        nested_virtualization: None,
        capacity_reservation: None,
        market_type: None,
    };
    let template = cloud
        .create_launch_template("dovetail-moto-default".into(), data)
        .await
        .unwrap();
    assert!(template.id.starts_with("lt-"), "{}", template.id);
    let found = cloud
        .describe_launch_templates(vec!["dovetail-moto-default".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let missing = cloud
        .describe_launch_templates(vec!["no-such-template".into()])
        .await
        .unwrap_err();
    assert_eq!(missing.code, "InvalidLaunchTemplateName.NotFoundException");

    // CreateFleet (instant) launches one instance, tagged, which DescribeInstances finds by tag.
    let out = cloud
        .create_fleet(CreateFleetRequest {
            client_token: "dovetail-moto-1".into(),
            context: None,
            capacity_type: CapacityType::OnDemand,
            reservation: None,
            on_demand_strategy: OnDemandStrategy::LowestPrice,
            overrides: vec![FleetOverride {
                launch_template_name: "dovetail-moto-default".into(),
                instance_type: "m5.large".into(),
                subnet_id: subnet.id.clone(),
                zone: subnet.zone.clone(),
                priority: None,
            }],
            target_capacity: 1,
            tags: cluster_tags.clone(),
        })
        .await
        .unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.instances.len(), 1, "{out:?}");
    let launched = &out.instances[0];
    assert_eq!(launched.instance_type, "m5.large");
    assert!(launched.id.starts_with("i-"));
    let mine = cloud
        .describe_instances(DescribeInstancesRequest {
            tags: tags(&[("kubernetes.io/cluster/moto-cluster", "owned")]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        mine.instances.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [&launched.id]
    );
    let instance = &mine.instances[0];
    assert_eq!(instance.zone, "us-east-1a");
    assert_eq!(instance.subnet_id, subnet.id);
    assert_eq!(instance.image_id, image.id);
    assert_eq!(instance.tags["karpenter.sh/nodepool"], "default");
    assert!(matches!(
        instance.state,
        InstanceState::Pending | InstanceState::Running
    ));
    assert!(
        instance.provider_id().starts_with("aws:///us-east-1a/i-"),
        "{}",
        instance.provider_id()
    );

    // Tags added later, then termination.
    cloud
        .create_tags(
            vec![launched.id.clone()],
            tags(&[("karpenter.sh/nodeclaim", "default-abcde")]),
        )
        .await
        .unwrap();
    cloud
        .terminate_instances(vec![launched.id.clone()])
        .await
        .unwrap();
    let after = cloud
        .describe_instances(DescribeInstancesRequest {
            instance_ids: vec![launched.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        after.instances[0].tags["karpenter.sh/nodeclaim"],
        "default-abcde"
    );
    assert!(matches!(
        after.instances[0].state,
        InstanceState::ShuttingDown | InstanceState::Terminated
    ));
    let running = cloud
        .describe_instances(DescribeInstancesRequest {
            tags: tags(&[("kubernetes.io/cluster/moto-cluster", "owned")]),
            states: vec![InstanceState::Pending, InstanceState::Running],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(running.instances.is_empty(), "{running:?}");
    cloud
        .delete_launch_template("dovetail-moto-default".into())
        .await
        .unwrap();

    // EC2's error codes reach the controller as they are, and are counted.
    let bogus = cloud
        .terminate_instances(vec!["i-0123456789abcdef0".into()])
        .await
        .unwrap_err();
    assert_eq!(bogus.code, "InvalidInstanceID.NotFound", "{bogus}");
    assert_eq!(
        metrics.get(
            CLOUDPROVIDER_ERRORS,
            &[
                ("error", "InvalidInstanceID.NotFound"),
                ("method", "TerminateInstances")
            ]
        ),
        Some(1.0)
    );

    // The interruption queue: found by name as Karpenter's INTERRUPTION_QUEUE gives it, read, deleted.
    let sqs = aws_sdk_sqs::Client::new(&config);
    let created = sqs
        .create_queue()
        .queue_name("moto-cluster")
        .send()
        .await
        .unwrap();
    let body = r#"{"version":"0","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2","detail":{"instance-id":"i-1","instance-action":"terminate"}}"#;
    sqs.send_message()
        .queue_url(created.queue_url().unwrap())
        .message_body(body)
        .send()
        .await
        .unwrap();
    let url = cloud.queue_url("moto-cluster").await.unwrap();
    assert_eq!(url, created.queue_url().unwrap());
    let messages = cloud
        .receive_messages(&url, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body, body);
    cloud
        .delete_message(&url, &messages[0].receipt_handle)
        .await
        .unwrap();
    let again = cloud
        .receive_messages(&url, 10, Duration::from_secs(0))
        .await
        .unwrap();
    assert!(again.is_empty(), "the deleted message came back: {again:?}");
}
