//! The few libpam calls the module needs (Linux-PAM, libpam0g-dev's headers), and a safe
//! wrapper around one `pam_handle_t`.
//!
//! Written by hand rather than through a binding crate: `pamsm` is GPL-3.0, and
//! `pam-bindings` (MIT) has no `pam_getenv`/`pam_putenv`/`pam_syslog`, so the FFI for
//! those would be needed anyway; this is about a dozen declarations.
use std::ffi::{CStr, CString, c_char, c_int, c_void};

#[repr(C)]
pub struct PamHandle {
    _private: [u8; 0],
}

pub const PAM_SUCCESS: c_int = 0;
pub const PAM_SYSTEM_ERR: c_int = 4;
pub const PAM_SESSION_ERR: c_int = 14;
pub const PAM_IGNORE: c_int = 25;
const PAM_USER: c_int = 2;
const PAM_SERVICE: c_int = 1;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
/// `flags` bit: the application asked modules not to print messages.
pub const PAM_SILENT: c_int = 0x8000;

type Cleanup = extern "C" fn(*mut PamHandle, *mut c_void, c_int);

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_get_item(pamh: *const PamHandle, item_type: c_int, item: *mut *const c_void) -> c_int;
    fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
    fn pam_putenv(pamh: *mut PamHandle, name_value: *const c_char) -> c_int;
    fn pam_set_data(pamh: *mut PamHandle, name: *const c_char, data: *mut c_void, cleanup: Option<Cleanup>) -> c_int;
    fn pam_get_data(pamh: *const PamHandle, name: *const c_char, data: *mut *const c_void) -> c_int;
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
    fn pam_prompt(pamh: *mut PamHandle, style: c_int, response: *mut *mut c_char, fmt: *const c_char, ...) -> c_int;
}

/// Turns argc/argv into strings (lossily: PAM arguments are ASCII in practice).
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings (as libpam guarantees).
pub unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .filter_map(|i| {
            let p = unsafe { *argv.add(i) };
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// Key under which open_session leaves the sid it holds, for close_session.
const DATA_KEY: &CStr = c"sessiond_pam_sid";

extern "C" fn free_sid(_pamh: *mut PamHandle, data: *mut c_void, _status: c_int) {
    if !data.is_null() {
        drop(unsafe { Box::from_raw(data as *mut u32) });
    }
}

/// One PAM handle, valid for the duration of a module call.
pub struct Handle {
    h: *mut PamHandle,
    pub silent: bool,
}

impl Handle {
    /// # Safety
    /// `h` must be the handle libpam passed to the current module call.
    pub unsafe fn new(h: *mut PamHandle, flags: c_int) -> Handle {
        Handle { h, silent: flags & PAM_SILENT != 0 }
    }

    fn item_str(&self, item: c_int) -> Option<String> {
        let mut p: *const c_void = std::ptr::null();
        let r = unsafe { pam_get_item(self.h, item, &mut p) };
        if r != PAM_SUCCESS || p.is_null() {
            return None;
        }
        Some(unsafe { CStr::from_ptr(p as *const c_char) }.to_string_lossy().into_owned())
    }

    pub fn user(&self) -> Option<String> {
        self.item_str(PAM_USER)
    }

    pub fn service(&self) -> Option<String> {
        self.item_str(PAM_SERVICE)
    }

    pub fn getenv(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let p = unsafe { pam_getenv(self.h, name.as_ptr()) };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    pub fn putenv(&self, name: &str, value: &str) -> Result<(), String> {
        let nv = CString::new(format!("{name}={value}")).map_err(|_| format!("{name}: value has a NUL byte"))?;
        match unsafe { pam_putenv(self.h, nv.as_ptr()) } {
            PAM_SUCCESS => Ok(()),
            r => Err(format!("pam_putenv({name}) failed: {r}")),
        }
    }

    pub fn syslog(&self, priority: c_int, msg: &str) {
        if let Ok(m) = CString::new(msg.replace('\0', "?")) {
            unsafe { pam_syslog(self.h, priority, c"%s".as_ptr(), m.as_ptr()) };
        }
    }

    /// Shows `msg` to the user through the application's conversation (unless PAM_SILENT).
    pub fn tell(&self, error: bool, msg: &str) {
        if self.silent {
            return;
        }
        if let Ok(m) = CString::new(msg.replace('\0', "?")) {
            let style = if error { PAM_ERROR_MSG } else { PAM_TEXT_INFO };
            let mut resp: *mut c_char = std::ptr::null_mut();
            unsafe { pam_prompt(self.h, style, &mut resp, c"%s".as_ptr(), m.as_ptr()) };
            if !resp.is_null() {
                unsafe { libc::free(resp as *mut c_void) };
            }
        }
    }

    /// Remembers the sid this handle holds (freed by libpam at pam_end).
    pub fn set_sid(&self, sid: Option<u32>) -> Result<(), String> {
        let data = match sid {
            Some(s) => Box::into_raw(Box::new(s)) as *mut c_void,
            None => std::ptr::null_mut(),
        };
        match unsafe { pam_set_data(self.h, DATA_KEY.as_ptr(), data, Some(free_sid)) } {
            PAM_SUCCESS => Ok(()),
            r => {
                free_sid(self.h, data, 0);
                Err(format!("pam_set_data failed: {r}"))
            }
        }
    }

    pub fn sid(&self) -> Option<u32> {
        let mut p: *const c_void = std::ptr::null();
        let r = unsafe { pam_get_data(self.h, DATA_KEY.as_ptr(), &mut p) };
        (r == PAM_SUCCESS && !p.is_null()).then(|| unsafe { *(p as *const u32) })
    }
}
