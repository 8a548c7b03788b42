//! `posed cameras`: the cameras this machine offers, every mode each one
//! lists, and the one the config's `[camera]` section would open.

use posed_capture::{negotiate, select, Backend, CaptureError, Device, Permission};

use crate::sources::camera::CameraConfig;

/// The listing, and whether the config's camera can be opened as asked.
pub struct Listing {
    pub text: String,
    /// The config's pick ("Desk Cam 1280x720@30 420f"), or why none.
    pub pick: Result<String, CaptureError>,
}

pub fn list(backend: &mut impl Backend, config: &CameraConfig) -> Listing {
    let mut text = format!(
        "permission   {}\n",
        permission_line(&backend.permission(false))
    );
    let devices = match backend.devices() {
        Ok(d) => d,
        Err(e) => return Listing { text, pick: Err(e) },
    };
    if devices.is_empty() {
        text.push_str("no cameras\n");
    }
    for (i, d) in devices.iter().enumerate() {
        describe(&mut text, i, d);
    }
    let session = config.session();
    let pick = select(&devices, &session.device).and_then(|d| {
        let choice = negotiate(&d.name, &d.modes, &session.want)?;
        Ok(format!("{} {choice}", d.name))
    });
    Listing { text, pick }
}

fn describe(out: &mut String, position: usize, d: &Device) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "{position}  {}  ({}; id {})", d.name, d.location, d.id);
    for m in &d.modes {
        let readable = if m.format.is_some() {
            ""
        } else {
            "  (not readable)"
        };
        let _ = writeln!(out, "     {m}{readable}");
    }
}

/// Camera access in a few words, with the fix where the user must act.
pub fn permission_line(p: &Permission) -> String {
    match p {
        Permission::Granted => "granted".into(),
        Permission::Undetermined => {
            "not asked yet (the daemon asks when it first opens the camera)".into()
        }
        Permission::Pending => "being asked".into(),
        Permission::Denied(fix) => format!("denied: {fix}"),
        Permission::Misconfigured(fix) => format!("misconfigured: {fix}"),
    }
}

/// The platform's cameras against `config`: prints the listing, fails with
/// one line when the config's camera cannot be opened as asked.
pub fn run(config: &CameraConfig) -> anyhow::Result<()> {
    let listing = list(&mut crate::sources::camera::platform_backend(), config);
    print!("{}", listing.text);
    let wanted = format!(
        "{}x{}@{} ({})",
        config.width,
        config.height,
        config.fps,
        config
            .session()
            .want
            .formats
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    match listing.pick {
        Ok(pick) => {
            println!("config       {wanted} opens {pick}");
            Ok(())
        }
        Err(why) => anyhow::bail!("config {wanted}: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use posed_capture::fake::{bgra_camera, FakeBackend};
    use posed_capture::{Permission, PixelFormat, Size};

    use super::*;

    fn config(device: &str, width: u32) -> CameraConfig {
        CameraConfig {
            device: device.into(),
            width,
            height: 48,
            fps: 30,
            formats: vec![PixelFormat::Bgra],
            pin_frame_rate: true,
            intrinsics: None,
        }
    }

    #[test]
    fn lists_every_camera_and_mode_and_names_the_pick() {
        let (mut fake, _) = FakeBackend::new(vec![
            bgra_camera("Studio Display Camera", Size::new(64, 48)),
            bgra_camera("Desk Cam", Size::new(64, 48)),
        ]);
        fake.permissions = [Permission::Undetermined].into();
        let l = list(&mut fake, &config("desk", 64));
        assert_eq!(
            l.text,
            "permission   not asked yet (the daemon asks when it first opens the camera)\n\
             0  Studio Display Camera  (fake; id fake:Studio Display Camera)\n     \
             64x48 BGRA @ 30 fps\n\
             1  Desk Cam  (fake; id fake:Desk Cam)\n     \
             64x48 BGRA @ 30 fps\n"
        );
        assert_eq!(l.pick.unwrap(), "Desk Cam 64x48@30 BGRA");
    }

    #[test]
    fn a_camera_that_cannot_serve_the_config_says_what_it_offers() {
        let (mut fake, _) = FakeBackend::new(vec![bgra_camera("Desk Cam", Size::new(64, 48))]);
        let l = list(&mut fake, &config("", 640));
        assert_eq!(
            l.pick.unwrap_err().to_string(),
            "\"Desk Cam\" offers no 640x48 at 30 fps in bgra; closest: 64x48@30 BGRA"
        );
        let l = list(&mut fake, &config("Logi", 64));
        assert_eq!(
            l.pick.unwrap_err().to_string(),
            "no camera named like \"Logi\" (found: Desk Cam)"
        );
    }
}
