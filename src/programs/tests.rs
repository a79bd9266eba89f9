//! Build order, rollback and teardown of a programs-mode session, against a recording fake
//! of the kernel side and the fake platform's host netlink.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::*;
use crate::fake::FakePlatform;
use crate::platform::Platform;

#[derive(Clone, Default)]
struct FakeKernel {
    log: Arc<Mutex<Vec<String>>>,
    fail: Arc<Mutex<Vec<&'static str>>>,
    /// What exists: cgroups and attached hooks.
    objects: Arc<Mutex<BTreeSet<String>>>,
}

#[derive(Debug)]
struct FakeAttached(String);

impl FakeKernel {
    fn op(&self, line: String) -> bool {
        self.log.lock().unwrap().push(line.clone());
        !self.fail.lock().unwrap().iter().any(|f| line.starts_with(f))
    }
    fn fail_on(&self, prefix: &'static str) {
        self.fail.lock().unwrap().push(prefix);
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn objects(&self) -> BTreeSet<String> {
        self.objects.lock().unwrap().clone()
    }
}

fn io_err() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EPERM)
}

impl ProgramsKernel for FakeKernel {
    type Attached = FakeAttached;
    fn check_kernel(&self) -> Result<(), kernel::KernelError> {
        if self.op("check kernel".into()) { Ok(()) } else { Err(kernel::KernelError::TooOld { release: "5.4.0".into() }) }
    }
    fn create_cgroup(&self, dir: &Path) -> Result<(), cgroup::CgroupError> {
        if !self.op(format!("mkdir {}", dir.display())) {
            return Err(cgroup::CgroupError::Io { op: "create", path: dir.into(), source: io_err() });
        }
        self.objects.lock().unwrap().insert(format!("cgroup {}", dir.display()));
        Ok(())
    }
    fn remove_cgroup(&self, dir: &Path) -> Result<(), cgroup::CgroupError> {
        if !self.op(format!("rmdir {}", dir.display())) {
            return Err(cgroup::CgroupError::Busy(dir.into()));
        }
        self.objects.lock().unwrap().remove(&format!("cgroup {}", dir.display()));
        Ok(())
    }
    fn attach(&self, dir: &Path, config: &HookConfig, pins: &Path) -> Result<FakeAttached, hooks::HookError> {
        let names: Vec<&str> = config.programs.iter().map(ProgramName::as_str).collect();
        if !self.op(format!("attach {} loopback {} programs [{}]", dir.display(), config.loopback, names.join(","))) {
            return Err(hooks::HookError::Missing("connect4"));
        }
        if !self.objects.lock().unwrap().contains(&format!("cgroup {}", dir.display())) {
            return Err(hooks::HookError::Cgroup { path: dir.into(), source: std::io::Error::from_raw_os_error(libc::ENOENT) });
        }
        let key = format!("hooks {}", dir.display());
        self.objects.lock().unwrap().insert(key.clone());
        self.objects.lock().unwrap().insert(format!("pins {}", pins.display()));
        Ok(FakeAttached(key))
    }
    async fn add_address(&self, plan: &address::AddressPlan) -> Result<(), NetError> {
        let address = plan.address.map_or_else(|| "none".to_string(), |a| a.to_string());
        if !self.op(format!("address {address} on {} table {}", plan.link, plan.table)) {
            return Err(NetError::Other("injected".into()));
        }
        self.objects.lock().unwrap().insert(format!("address {}", plan.link));
        Ok(())
    }
    async fn remove_address(&self, spec: &address::AddressTeardown) -> Vec<NetError> {
        if !self.op(format!("remove address on {} table {}", spec.link, spec.table)) {
            return vec![NetError::Other("injected".into())];
        }
        self.objects.lock().unwrap().remove(&format!("address {}", spec.link));
        Vec::new()
    }
    fn unpin(&self, pins: &Path) -> Vec<hooks::HookError> {
        if !self.op(format!("unpin {}", pins.display())) {
            return vec![hooks::HookError::NotAHook(pins.into())];
        }
        self.objects.lock().unwrap().remove(&format!("pins {}", pins.display()));
        Vec::new()
    }
    fn detach(&self, attached: FakeAttached) -> Vec<hooks::HookError> {
        if !self.op(format!("detach {}", attached.0)) {
            return vec![hooks::HookError::Missing("connect4")];
        }
        self.objects.lock().unwrap().remove(&attached.0);
        Vec::new()
    }
}

fn plan() -> ProgramsPlan {
    ProgramsPlan {
        sid: Sid::new(2).unwrap(),
        cgroup: PathBuf::from("/cg/sessiond-2"),
        cgroup_owner: CgroupOwner::Sessiond,
        pins: PathBuf::from("/bpf/sessiond/2"),
        hooks: HookConfig {
            loopback: Ipv4Addr::new(127, 0, 0, 3),
            address: None,
            programs: vec!["python3".parse().unwrap()],
            virtualize: vec![Virtualize::Loopback],
        },
        address: None,
    }
}

fn plan_with_address() -> ProgramsPlan {
    let sid = Sid::new(2).unwrap();
    let mut p = plan();
    p.hooks.virtualize = vec![Virtualize::Address, Virtualize::Loopback];
    p.hooks.address = Some(Ipv4Addr::new(10, 0, 0, 100));
    p.address = Some(address::AddressPlan {
        uplink: "br-lan".into(),
        link: address::link_name(sid),
        mac: [2, 0, 0, 0, 0, 2],
        address: Some("10.0.0.100/24".parse().unwrap()),
        gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        table: address::table(sid),
    });
    p
}

#[tokio::test]
async fn the_address_goes_on_before_the_hooks_and_comes_off_after_them() {
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    let attached = build(&k, p.host(), &plan_with_address()).await.unwrap();
    assert_eq!(k.log()[2..], ["address 10.0.0.100/24 on sdp2 table 268435458", "attach /cg/sessiond-2 loopback 127.0.0.3 programs [python3]"]);
    assert!(teardown(&k, p.host(), &plan_with_address().teardown_spec(), Some(attached)).await.is_empty());
    assert_eq!(k.log()[4..], ["detach hooks /cg/sessiond-2", "unpin /bpf/sessiond/2", "remove address on sdp2 table 268435458", "rmdir /cg/sessiond-2"]);
    assert!(k.objects().is_empty() && p.is_empty());
    // A failed address rolls back the cgroup and the loopback, and never attaches.
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    k.fail_on("address");
    let e = build(&k, p.host(), &plan_with_address()).await.unwrap_err();
    assert_eq!(e.step, "put the session address on its own link");
    assert!(k.objects().is_empty() && p.is_empty(), "{:?}", k.objects());
    assert!(!k.log().iter().any(|l| l.starts_with("attach")));
}

#[tokio::test]
async fn build_makes_cgroup_then_loopback_then_hooks_and_teardown_undoes_it_in_reverse() {
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    let attached = build(&k, p.host(), &plan()).await.unwrap();
    assert_eq!(k.log(), ["check kernel", "mkdir /cg/sessiond-2", "attach /cg/sessiond-2 loopback 127.0.0.3 programs [python3]"]);
    assert_eq!(p.log(), ["host: addr add 127.0.0.3/32 dev lo scope host"]);
    assert_eq!(k.objects().len(), 3, "cgroup, hooks, pins: {:?}", k.objects());
    let errors = teardown(&k, p.host(), &plan().teardown_spec(), Some(attached)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(k.log()[3..], ["detach hooks /cg/sessiond-2", "unpin /bpf/sessiond/2", "rmdir /cg/sessiond-2"]);
    assert_eq!(p.log()[1..], ["host: addr del 127.0.0.3/32 dev lo"]);
    assert!(k.objects().is_empty() && p.is_empty(), "left: {:?} {:?}", k.objects(), p.objects());
}

#[tokio::test]
async fn a_failed_step_rolls_back_everything_before_it() {
    for failing in ["mkdir", "addr add", "attach"] {
        let (k, p) = (FakeKernel::default(), FakePlatform::new());
        match failing {
            "addr add" => p.fail_on("host: addr add"),
            f => k.fail_on(f),
        }
        let e = build(&k, p.host(), &plan()).await.unwrap_err();
        let want = match failing {
            "mkdir" => "create the session cgroup",
            "addr add" => "add the session loopback to lo",
            _ => "attach the hooks",
        };
        assert_eq!(e.step, want);
        assert!(k.objects().is_empty() && p.is_empty(), "{failing}: left {:?} {:?}", k.objects(), p.objects());
        assert!(!k.log().iter().any(|l| l.starts_with("detach")), "nothing was attached to detach");
        assert!(k.log().iter().any(|l| l == "unpin /bpf/sessiond/2"), "the rollback removes any pins: {:?}", k.log());
    }
}

#[tokio::test]
async fn an_old_kernel_is_refused_before_anything_is_made() {
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    k.fail_on("check kernel");
    let e = build(&k, p.host(), &plan()).await.unwrap_err();
    assert_eq!(e.step, "check the kernel");
    assert!(e.to_string().contains("needs Linux 5.8"), "{e}");
    assert!(!k.log().iter().any(|l| l.starts_with("mkdir")));
}

#[tokio::test]
async fn teardown_goes_on_past_errors_and_reports_each() {
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    let attached = build(&k, p.host(), &plan()).await.unwrap();
    k.fail_on("detach");
    k.fail_on("unpin");
    p.fail_on("host: addr del");
    let errors = teardown(&k, p.host(), &plan().teardown_spec(), Some(attached)).await;
    let steps: Vec<_> = errors.iter().map(|e| e.step).collect();
    assert_eq!(steps, ["detach the hooks", "unpin the hooks", "remove the session loopback from lo"]);
    assert!(k.log().last().unwrap().starts_with("rmdir"), "the cgroup still went: {:?}", k.log());
    // A second teardown (a crash's recovery: no hooks held any more) is a no-op that succeeds.
    let (k2, p2) = (FakeKernel::default(), FakePlatform::new());
    assert!(teardown(&k2, p2.host(), &plan().teardown_spec(), None).await.is_empty());
}

/// A login in logind's session-5.scope: the hooks go onto the scope, which is systemd's.
fn plan_on_scope() -> ProgramsPlan {
    ProgramsPlan { cgroup: PathBuf::from("/cg/user.slice/user-1000.slice/session-5.scope"), cgroup_owner: CgroupOwner::Logind, ..plan() }
}

#[tokio::test]
async fn on_a_logind_scope_only_the_hooks_go_on_and_come_off_the_scope_stays() {
    let scope = "cgroup /cg/user.slice/user-1000.slice/session-5.scope".to_string();
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    k.objects.lock().unwrap().insert(scope.clone());
    let attached = build(&k, p.host(), &plan_on_scope()).await.unwrap();
    assert_eq!(k.log(), ["check kernel", "attach /cg/user.slice/user-1000.slice/session-5.scope loopback 127.0.0.3 programs [python3]"]);
    assert!(teardown(&k, p.host(), &plan_on_scope().teardown_spec(), Some(attached)).await.is_empty());
    assert_eq!(k.log()[2..], ["detach hooks /cg/user.slice/user-1000.slice/session-5.scope", "unpin /bpf/sessiond/2"]);
    assert_eq!(k.objects(), [scope.clone()].into(), "the scope stays, nothing else does");
    assert!(p.is_empty());
    // A failed attach rolls back the loopback and the pins, and leaves the scope alone.
    let (k, p) = (FakeKernel::default(), FakePlatform::new());
    k.objects.lock().unwrap().insert(scope.clone());
    k.fail_on("attach");
    assert_eq!(build(&k, p.host(), &plan_on_scope()).await.unwrap_err().step, "attach the hooks");
    assert!(!k.log().iter().any(|l| l.starts_with("mkdir") || l.starts_with("rmdir")), "{:?}", k.log());
    assert_eq!(k.objects(), [scope].into());
    assert!(p.is_empty());
}

#[test]
fn program_names_are_the_kernels_process_names() {
    let n: ProgramName = "python3".parse().unwrap();
    assert_eq!(&n.comm_key()[..8], b"python3\0");
    assert_eq!(n.comm_key()[8..], [0; 8]);
    assert!("x".repeat(15).parse::<ProgramName>().is_ok());
    let e = "crmclient-longname".parse::<ProgramName>().unwrap_err();
    assert_eq!(e, BadProgramName::TooLong("crmclient-longname".into(), "crmclient-longn".into()));
    assert!(e.to_string().contains("15 bytes"), "{e}");
    assert_eq!("".parse::<ProgramName>(), Err(BadProgramName::Empty));
    assert!(matches!("/usr/bin/python3".parse::<ProgramName>(), Err(BadProgramName::NotAName(_))));
}
