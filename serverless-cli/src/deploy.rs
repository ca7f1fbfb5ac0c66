//! `deploy` and the builds of `image = "build:DIR"` apps: each build runs with buildah
//! (`serverless-build`), its steps shown as they run with their time, and its image written as an
//! OCI archive under `DATA_DIR/build/images` that the engine imports like any other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serverless_build::{BuildEvent, BuildRequest, Buildah, Builder, Built};
use serverless_core::{AppSpec, BuildSpec, ImageRef};
use serverless_proxy::BoxError;

use crate::admin;
use crate::cli::{AdminArgs, BuildArgs};

/// `deploy FILE|DIR`: a folder is built from its Dockerfile and deployed as one app (named
/// after the folder unless `--name`); a file's apps are built when they say so, then deployed.
pub(crate) async fn deploy(
    admin: &AdminArgs,
    path: &Path,
    args: &BuildArgs,
) -> Result<(), BoxError> {
    if path.is_dir() {
        let app = folder_app(path, args)?;
        let name = app.name.clone();
        let host = app.hosts.first().cloned().unwrap_or_default();
        let mut apps = vec![app];
        build_apps(&mut apps, &args.data_dir).await?;
        admin::deploy(admin, &apps).await?;
        prune_archives(&args.data_dir, &apps);
        let port = args.gateway.rsplit(':').next().unwrap_or("8080");
        println!("{name} is live at http://{host}:{port}/");
        return Ok(());
    }
    let mut apps = admin::load_apps(path)?;
    build_apps(&mut apps, &args.data_dir).await?;
    admin::deploy(admin, &apps).await?;
    prune_archives(&args.data_dir, &apps);
    Ok(())
}

/// The app of `deploy DIR`: `image = "build:DIR"` with the command line's build options,
/// validated like a config entry (so errors name the field).
fn folder_app(dir: &Path, args: &BuildArgs) -> Result<AppSpec, BoxError> {
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&dir),
    };
    let mut build = serde_json::Map::new();
    if let Some(d) = &args.dockerfile {
        build.insert("dockerfile".into(), d.display().to_string().into());
    }
    if let Some(t) = &args.target {
        build.insert("target".into(), t.clone().into());
    }
    if let Some(t) = &args.build_timeout {
        build.insert("timeout".into(), t.clone().into());
    }
    let mut build_args = serde_json::Map::new();
    for arg in &args.build_args {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| format!("--build-arg {arg:?}: expected NAME=VALUE"))?;
        build_args.insert(k.into(), v.into());
    }
    if !build_args.is_empty() {
        build.insert("args".into(), build_args.into());
    }
    let mut spec = serde_json::json!({
        "name": name,
        "image": format!("build:{}", dir.display()),
    });
    if !build.is_empty() {
        spec["build"] = build.into();
    }
    Ok(AppSpec::from_json(&spec.to_string())?)
}

/// A DNS-label app name from a folder's name (`My_App` → `my-app`).
fn default_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    let name = &name[..name.len().min(63)];
    if name.is_empty() {
        "app".into()
    } else {
        name.trim_end_matches('-').to_owned()
    }
}

/// The builder of an engine whose data lives in `data_dir`.
pub(crate) fn builder(data_dir: &Path) -> Buildah {
    Buildah::new(data_dir.join("build"))
}

/// Builds every app that has a `build`; its image becomes the built OCI archive.
pub(crate) async fn build_apps(apps: &mut [AppSpec], data_dir: &Path) -> Result<(), BoxError> {
    for app in apps.iter_mut() {
        if let Some(spec) = app.build.take() {
            let archive = build_app(&app.name, &spec, data_dir)
                .await
                .map_err(|e| format!("app {}: {e}", app.name))?;
            app.image = ImageRef::OciArchive(archive);
        }
    }
    Ok(())
}

/// Builds one app into `DATA_DIR/build/images/NAME-IMAGEID.tar` (kept when it exists: an
/// unchanged rebuild leaves the app's spec, and so its running instances, as they are).
async fn build_app(name: &str, spec: &BuildSpec, data_dir: &Path) -> Result<PathBuf, BoxError> {
    let images = images_dir(data_dir);
    let building = images.join(format!("{name}.building.tar"));
    let request = BuildRequest::from_spec(spec, BuildSpec::image_tag(name), &building);
    eprintln!(
        "building {name} from {}",
        request.dockerfile_path().display()
    );
    let mut progress = Progress::default();
    let built = builder(data_dir)
        .build(&request, &mut |event| progress.event(event))
        .await;
    progress.clear();
    let built = built?;
    let archive = images.join(format!("{name}-{}.tar", short_id(&built)));
    if archive.exists() {
        std::fs::remove_file(&building).map_err(|e| format!("{}: {e}", building.display()))?;
    } else {
        std::fs::rename(&building, &archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    }
    eprintln!(
        "built {name} in {} ({} of {} steps cached): {}",
        seconds(built.elapsed),
        built.cached_steps(),
        built.steps.len(),
        archive.display()
    );
    Ok(archive)
}

fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("build").join("images")
}

fn short_id(built: &Built) -> &str {
    &built.image_id[..built.image_id.len().min(12)]
}

/// Removes the archives of earlier builds of `apps` once the new one is deployed.
pub(crate) fn prune_archives(data_dir: &Path, apps: &[AppSpec]) {
    let Ok(entries) = std::fs::read_dir(images_dir(data_dir)) else {
        return;
    };
    let entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    for app in apps {
        let ImageRef::OciArchive(current) = &app.image else {
            continue;
        };
        if !current.starts_with(images_dir(data_dir)) {
            continue;
        }
        let prefix = format!("{}-", app.name);
        for path in &entries {
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
            let Some(file) = file else { continue };
            // NAME-<12 hex>.tar, and not another app whose name starts with NAME-.
            let old = file
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".tar"))
                .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()));
            if old && path != current {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A build's steps on stderr: a spinner for the running step, a line with its time for each
/// finished one, and the steps' output above them.
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn event(&mut self, event: BuildEvent) {
        match event {
            BuildEvent::StepStarted(step) => {
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(step.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bar = Some(bar);
            }
            BuildEvent::StepFinished(t) => {
                self.clear();
                eprintln!(
                    "  {:>6}  {}{}",
                    seconds(t.elapsed),
                    t.step,
                    if t.cached { "  (cached)" } else { "" }
                );
            }
            BuildEvent::Output(line) => match &self.bar {
                Some(bar) => bar.suspend(|| eprintln!("          | {line}")),
                None => eprintln!("          | {line}"),
            },
            _ => {}
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::default_name;

    #[test]
    fn folder_names_become_app_names() {
        assert_eq!(default_name(Path::new("/x/My_App")), "my-app");
        assert_eq!(default_name(Path::new("/x/--")), "app");
        assert_eq!(default_name(Path::new("/x/hello")), "hello");
        let long = format!("/x/{}", "a".repeat(80));
        assert_eq!(default_name(Path::new(&long)).len(), 63);
    }
}
