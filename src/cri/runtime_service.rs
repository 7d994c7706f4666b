//! `runtime.v1.RuntimeService`: the RPCs rcri implements so far. The rest
//! fall through to the generated stubs, which answer `Unimplemented` naming
//! the RPC.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use tonic::{Request, Response, Status};

use super::{CriError, RUNTIME_API_VERSION, RUNTIME_NAME, VERSION, quoted};
use crate::config::{CgroupDriver, Config};
use crate::handler::{HandlerTable, SharedHandlers};
use crate::pod::PodManager;
use crate::proto::{self, runtime_service_server::RuntimeService};
use crate::streaming::{AttachRequest, ExecRequest, PortForwardRequest, StreamingServer};

/// The kubelet-facing version of the runtime API, as other runtimes report it.
const KUBELET_API_VERSION: &str = "0.1.0";

pub struct RuntimeSvc {
    config: Arc<Config>,
    handlers: Arc<SharedHandlers>,
    pods: Arc<PodManager>,
    streaming: Arc<StreamingServer>,
    /// The pod CIDR last given by `UpdateRuntimeConfig`.
    pod_cidr: RwLock<String>,
}

impl RuntimeSvc {
    pub fn new(
        config: Arc<Config>,
        handlers: Arc<SharedHandlers>,
        pods: Arc<PodManager>,
        streaming: Arc<StreamingServer>,
    ) -> Self {
        RuntimeSvc {
            config,
            handlers,
            pods,
            streaming,
            pod_cidr: RwLock::new(String::new()),
        }
    }

    fn runtime_handlers(table: &HandlerTable) -> Vec<proto::RuntimeHandler> {
        let entry = |name: &str| {
            table.handlers.get(name).map(|h| proto::RuntimeHandler {
                name: name.to_string(),
                features: Some(proto::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: h.features.recursive_read_only_mounts,
                    user_namespaces: h.features.user_namespaces,
                }),
            })
        };
        // The default again under the empty name: that is what a pod without
        // a RuntimeClass gets.
        let default = entry(&table.default_handler).map(|mut h| {
            h.name.clear();
            h
        });
        default
            .into_iter()
            .chain(table.names().filter_map(entry))
            .collect()
    }

    fn verbose_info(&self, table: &HandlerTable) -> HashMap<String, String> {
        let dropped =
            serde_json::to_string(&table.dropped).expect("dropped handlers serialize to JSON");
        // The running configuration with the handler table in use (a reload
        // may have replaced it).
        let effective = Config {
            default_handler: table.default_handler.clone(),
            handlers: table
                .handlers
                .iter()
                .map(|(name, entry)| (name.clone(), entry.config.clone()))
                .collect(),
            dropped_handlers: table.dropped.clone(),
            ..(*self.config).clone()
        };
        let mut info = HashMap::from([
            ("config".to_string(), effective.to_json()),
            ("droppedHandlers".to_string(), dropped),
        ]);
        let pod_cidr = self.pod_cidr.read().expect("pod CIDR lock").clone();
        if !pod_cidr.is_empty() {
            info.insert("podCIDR".to_string(), pod_cidr);
        }
        info
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(
        &self,
        _request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        Ok(Response::new(proto::VersionResponse {
            version: KUBELET_API_VERSION.to_string(),
            runtime_name: RUNTIME_NAME.to_string(),
            runtime_version: VERSION.to_string(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let conditions = vec![
            proto::RuntimeCondition {
                r#type: "RuntimeReady".to_string(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            match self.pods.network_status() {
                Ok(_) => proto::RuntimeCondition {
                    r#type: "NetworkReady".to_string(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                Err(why) => proto::RuntimeCondition {
                    r#type: "NetworkReady".to_string(),
                    status: false,
                    reason: "NetworkPluginNotReady".to_string(),
                    message: format!("Network plugin returns error: {why}"),
                },
            },
        ];
        let table = self.handlers.current();
        let info = if request.get_ref().verbose {
            self.verbose_info(&table)
        } else {
            HashMap::new()
        };
        Ok(Response::new(proto::StatusResponse {
            status: Some(proto::RuntimeStatus { conditions }),
            info,
            runtime_handlers: Self::runtime_handlers(&table),
            features: Some(proto::RuntimeFeatures::default()),
        }))
    }

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        let cgroup_driver = match self.config.cgroup_driver {
            CgroupDriver::Systemd => proto::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => proto::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(proto::RuntimeConfigResponse {
            linux: Some(proto::LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let config = request.config.ok_or_else(|| {
            CriError::InvalidArgument("RunPodSandboxRequest.config is required".into())
        })?;
        let pod_sandbox_id = self
            .pods
            .run_pod(config, &request.runtime_handler)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::RunPodSandboxResponse {
            pod_sandbox_id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        self.pods
            .stop_pod(&request.into_inner().pod_sandbox_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        self.pods
            .remove_pod(&request.into_inner().pod_sandbox_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let status = self
            .pods
            .pod_status(&request.pod_sandbox_id, request.verbose)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(status))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let items = self.pods.list_pods(request.into_inner().filter).await;
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let config = request.config.ok_or_else(|| {
            CriError::InvalidArgument("CreateContainerRequest.config is required".into())
        })?;
        let container_id = self
            .pods
            .create_container(&request.pod_sandbox_id, config, request.sandbox_config)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::CreateContainerResponse {
            container_id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        self.pods
            .start_container(&request.into_inner().container_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        let request = request.into_inner();
        self.pods
            .stop_container(&request.container_id, request.timeout)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        self.pods
            .remove_container(&request.into_inner().container_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let containers = self.pods.list_containers(request.into_inner().filter).await;
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let status = self
            .pods
            .container_status(&request.container_id, request.verbose)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(status))
    }

    async fn update_container_resources(
        &self,
        request: Request<proto::UpdateContainerResourcesRequest>,
    ) -> Result<Response<proto::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        self.pods
            .update_resources(&request.container_id, request.linux)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<proto::ReopenContainerLogRequest>,
    ) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
        self.pods
            .reopen_log(&request.into_inner().container_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let response = self
            .pods
            .exec_sync(&request.container_id, request.cmd, request.timeout)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(response))
    }

    async fn exec(
        &self,
        request: Request<proto::ExecRequest>,
    ) -> Result<Response<proto::ExecResponse>, Status> {
        let request = request.into_inner();
        if request.cmd.is_empty() {
            return Err(CriError::InvalidArgument("Exec needs a command".into()).into());
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(CriError::InvalidArgument(
                "Exec needs at least one of stdin, stdout and stderr".into(),
            )
            .into());
        }
        self.pods
            .check_exec(&request.container_id)
            .await
            .map_err(CriError::from)?;
        let url = self.streaming.register_exec(ExecRequest {
            container_id: request.container_id,
            cmd: request.cmd,
            stdin: request.stdin,
            stdout: request.stdout,
            // A terminal merges stderr into its output.
            stderr: request.stderr && !request.tty,
            tty: request.tty,
        });
        Ok(Response::new(proto::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<proto::AttachRequest>,
    ) -> Result<Response<proto::AttachResponse>, Status> {
        let request = request.into_inner();
        if !(request.stdin || request.stdout || request.stderr) {
            return Err(CriError::InvalidArgument(
                "Attach needs at least one of stdin, stdout and stderr".into(),
            )
            .into());
        }
        let container_id = self
            .pods
            .check_attach(&request.container_id, request.stdin, request.tty)
            .await
            .map_err(CriError::from)?;
        let url = self.streaming.register_attach(AttachRequest {
            container_id,
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
        });
        Ok(Response::new(proto::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<proto::PortForwardRequest>,
    ) -> Result<Response<proto::PortForwardResponse>, Status> {
        let request = request.into_inner();
        if request.pod_sandbox_id.is_empty() {
            return Err(
                CriError::InvalidArgument("PortForward needs a pod sandbox id".into()).into(),
            );
        }
        let mut ports = Vec::with_capacity(request.port.len());
        for port in &request.port {
            match u16::try_from(*port) {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return Err(CriError::InvalidArgument(format!(
                        "port {port} cannot be forwarded: ports are from 1 to 65535"
                    ))
                    .into());
                }
            }
        }
        let pod_id = self
            .pods
            .check_port_forward(&request.pod_sandbox_id)
            .await
            .map_err(CriError::from)?;
        let url = self
            .streaming
            .register_port_forward(PortForwardRequest { pod_id, ports });
        Ok(Response::new(proto::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<proto::ContainerStatsRequest>,
    ) -> Result<Response<proto::ContainerStatsResponse>, Status> {
        let stats = self
            .pods
            .container_stats(&request.into_inner().container_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<proto::ListContainerStatsRequest>,
    ) -> Result<Response<proto::ListContainerStatsResponse>, Status> {
        let stats = self
            .pods
            .list_container_stats(request.into_inner().filter)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<proto::PodSandboxStatsRequest>,
    ) -> Result<Response<proto::PodSandboxStatsResponse>, Status> {
        let stats = self
            .pods
            .pod_stats(&request.into_inner().pod_sandbox_id)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<proto::ListPodSandboxStatsRequest>,
    ) -> Result<Response<proto::ListPodSandboxStatsResponse>, Status> {
        let stats = self
            .pods
            .list_pod_stats(request.into_inner().filter)
            .await
            .map_err(CriError::from)?;
        Ok(Response::new(proto::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<proto::UpdateRuntimeConfigResponse>, Status> {
        let pod_cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        // An empty CIDR leaves the known one alone, as the kubelet expects.
        if !pod_cidr.is_empty() {
            validate_pod_cidr(&pod_cidr)?;
            tracing::info!(pod_cidr = %pod_cidr, "pod CIDR updated");
            *self.pod_cidr.write().expect("pod CIDR lock") = pod_cidr;
        }
        Ok(Response::new(proto::UpdateRuntimeConfigResponse {}))
    }
}

/// The kubelet sends one CIDR, or two separated by a comma (dual stack).
fn validate_pod_cidr(value: &str) -> Result<(), CriError> {
    for cidr in value.split(',') {
        let valid = cidr.split_once('/').is_some_and(|(addr, len)| {
            match (addr.trim().parse::<IpAddr>(), len.trim().parse::<u8>()) {
                (Ok(IpAddr::V4(_)), Ok(len)) => len <= 32,
                (Ok(IpAddr::V6(_)), Ok(len)) => len <= 128,
                _ => false,
            }
        });
        if !valid {
            return Err(CriError::InvalidArgument(format!(
                "pod CIDR {} is not a valid CIDR such as 10.244.0.0/24 (in {})",
                quoted(cidr),
                quoted(value)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_pod_cidr;

    #[test]
    fn pod_cidrs() {
        assert!(validate_pod_cidr("10.244.0.0/24").is_ok());
        assert!(validate_pod_cidr("10.244.0.0/24,fd00::/64").is_ok());
        assert!(validate_pod_cidr("10.244.0.0").is_err());
        assert!(validate_pod_cidr("10.244.0.0/33").is_err());
        assert!(validate_pod_cidr("fd00::/129").is_err());
        assert!(validate_pod_cidr("x/24").is_err());
        assert!(validate_pod_cidr("10.0.0.0/8,").is_err());
    }
}
