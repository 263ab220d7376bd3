//! [`describe_group`]: librdkafka's `rd_kafka_DescribeConsumerGroups`, called through its C API.
//!
//! Why by hand: the classic DescribeGroups request (what rust-rdkafka's `fetch_group_list`
//! sends) answers a KIP-848 ("consumer" protocol) group with `GROUP_ID_NOT_FOUND` and state
//! `Dead`, live members or not, so a tool relying on it would take a running group for an empty
//! one. librdkafka's DescribeConsumerGroups asks with ConsumerGroupDescribe first and falls back
//! to DescribeGroups for classic groups (librdkafka 2.10+), so it describes groups of both
//! protocols, over the client's own connection settings (TLS, SASL). rust-rdkafka does not wrap
//! it, so this module calls the C API: one of the workspace's two modules with `unsafe` code
//! (the other sets jemalloc's options, `prism_runtime::allocator`), kept to the calls below, each
//! with what makes it sound.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka_sys as ffi;

use super::blocking;
use crate::client::base_client_config;
use crate::error::KafkaError;

/// A consumer group as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// `Stable`, `Empty`, `Dead`, `PreparingRebalance`, … (librdkafka's state names).
    pub state: String,
    /// `Consumer` (KIP-848), `Classic`, or `Unknown` for a group that does not exist.
    pub group_type: String,
    /// The live members.
    pub members: Vec<GroupMember>,
}

/// One live member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member id the coordinator gave it.
    pub member_id: String,
    /// Its `client.id`.
    pub client_id: String,
    /// The host it connected from.
    pub host: String,
    /// Its `group.instance.id` (static membership), if any.
    pub instance_id: Option<String>,
}

/// Describes `group` (either protocol). A group the broker does not know is described as
/// `Dead` with no members; a failure to ask is an error.
pub async fn describe_group(
    kafka: &prism_config::KafkaConfig,
    group: &str,
    timeout: Duration,
) -> Result<GroupDescription, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(kafka, "describe-groups").create()?;
    let group = group.to_owned();
    let bootstrap = kafka.bootstrap_servers.clone();
    blocking(kafka, move || {
        describe_blocking(&admin, &group, timeout).map_err(|detail| KafkaError::Unreachable {
            bootstrap,
            detail: format!("describing group {group}: {detail}"),
        })
    })
    .await
}

/// Frees what librdkafka allocated for one request, whatever path leaves the function.
struct Request {
    queue: *mut ffi::rd_kafka_queue_t,
    options: *mut ffi::rd_kafka_AdminOptions_t,
    event: *mut ffi::rd_kafka_event_t,
}

impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: each pointer is either null or was returned by the matching librdkafka
        // constructor below and is destroyed exactly once, here.
        unsafe {
            if !self.event.is_null() {
                ffi::rd_kafka_event_destroy(self.event);
            }
            if !self.options.is_null() {
                ffi::rd_kafka_AdminOptions_destroy(self.options);
            }
            if !self.queue.is_null() {
                ffi::rd_kafka_queue_destroy(self.queue);
            }
        }
    }
}

/// Copies a C string librdkafka owns; `None` for a null pointer.
///
/// # Safety
/// `ptr` must be null or point to a NUL-terminated string that stays valid for the call.
unsafe fn owned(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: non-null and NUL-terminated per the function's contract.
        Some(unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
    }
}

fn describe_blocking(
    admin: &AdminClient<DefaultClientContext>,
    group: &str,
    timeout: Duration,
) -> Result<GroupDescription, String> {
    let name = CString::new(group).map_err(|_| "a group name cannot contain NUL".to_owned())?;
    let client = admin.inner().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `client` is the live handle of `admin`, which outlives this function. Every
    // object created here is owned by `request` and destroyed when it drops; the event's
    // results (descriptions, members, their strings) are owned by the event and read before
    // it is destroyed. The group-name array lives on this stack frame across the call, and
    // librdkafka copies the names before returning.
    unsafe {
        let mut request = Request {
            queue: ffi::rd_kafka_queue_new(client),
            options: ffi::rd_kafka_AdminOptions_new(
                client,
                ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            ),
            event: std::ptr::null_mut(),
        };
        if request.queue.is_null() || request.options.is_null() {
            return Err("librdkafka could not create the request".into());
        }
        let mut errstr = [0 as c_char; 256];
        let set = ffi::rd_kafka_AdminOptions_set_request_timeout(
            request.options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if set != ffi::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(owned(errstr.as_ptr()).unwrap_or_default());
        }
        let mut names = [name.as_ptr()];
        ffi::rd_kafka_DescribeConsumerGroups(
            client,
            names.as_mut_ptr(),
            names.len(),
            request.options,
            request.queue,
        );
        // The request timeout bounds the answer; the extra second covers the queue hand-off.
        request.event = ffi::rd_kafka_queue_poll(request.queue, timeout_ms.saturating_add(1_000));
        if request.event.is_null() {
            return Err(format!("no answer within {timeout:?}"));
        }
        if ffi::rd_kafka_event_error(request.event) != ffi::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(owned(ffi::rd_kafka_event_error_string(request.event)).unwrap_or_default());
        }
        let result = ffi::rd_kafka_event_DescribeConsumerGroups_result(request.event);
        if result.is_null() {
            return Err("the answer was not a DescribeConsumerGroups result".into());
        }
        let mut count = 0usize;
        let descriptions = ffi::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
        if descriptions.is_null() || count == 0 {
            return Err("the answer described no group".into());
        }
        let description = *descriptions;
        let error = ffi::rd_kafka_ConsumerGroupDescription_error(description);
        if !error.is_null() {
            let code = ffi::rd_kafka_error_code(error);
            // A group the coordinator does not know: nothing to describe, nobody in it.
            if code == ffi::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND {
                return Ok(GroupDescription {
                    state: "Dead".into(),
                    group_type: "Unknown".into(),
                    members: Vec::new(),
                });
            }
            return Err(owned(ffi::rd_kafka_error_string(error)).unwrap_or_default());
        }
        let state = owned(ffi::rd_kafka_consumer_group_state_name(
            ffi::rd_kafka_ConsumerGroupDescription_state(description),
        ))
        .unwrap_or_default();
        let group_type = owned(ffi::rd_kafka_consumer_group_type_name(
            ffi::rd_kafka_ConsumerGroupDescription_type(description),
        ))
        .unwrap_or_default();
        let members = (0..ffi::rd_kafka_ConsumerGroupDescription_member_count(description))
            .map(|index| ffi::rd_kafka_ConsumerGroupDescription_member(description, index))
            .filter(|member| !member.is_null())
            .map(|member| GroupMember {
                member_id: owned(ffi::rd_kafka_MemberDescription_consumer_id(member)).unwrap_or_default(),
                client_id: owned(ffi::rd_kafka_MemberDescription_client_id(member)).unwrap_or_default(),
                host: owned(ffi::rd_kafka_MemberDescription_host(member)).unwrap_or_default(),
                instance_id: owned(ffi::rd_kafka_MemberDescription_group_instance_id(member)),
            })
            .collect();
        Ok(GroupDescription { state, group_type, members })
    }
}
