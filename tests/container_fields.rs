mod common;
use common::node::{HANDLERS, Node};

#[tokio::test]
async fn probe() {
    let node = Node::start().await;
    for handler in HANDLERS {
        let pod = node.run_pod(&format!("p-{handler}"), handler).await;
        let c = node.run(&pod, "c", "exec sleep 1000").await;
        for cmd in [
            "mount",
            "ls /sys/fs/cgroup /sys/fs/cgroup/memory | head -30",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            "cat /proc/self/cgroup",
            "grep -E 'Cap|NoNew|Seccomp' /proc/self/status",
            "cat /proc/self/oom_score_adj",
            "cat /etc/hosts /etc/hostname",
            "ps",
            "cat /proc/1/cmdline",
            "unshare -n true; echo $?",
            "id",
        ] {
            let r = node.exec(&c, &["sh", "-c", cmd], 10).await.unwrap();
            println!(
                "[{handler}] $ {cmd} -> {}\n{}{}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            );
        }
        let st = node
            .client()
            .await
            .container_status(rcri::proto::ContainerStatusRequest {
                container_id: c.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        println!("{:?}", st.info);
        node.remove_pod(&pod).await;
    }
    node.assert_clean();
}
