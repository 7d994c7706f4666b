//! Resolving the container's user from the CRI security context and the
//! image's `User`, against the image's own `/etc/passwd` and `/etc/group`
//! (passed in as text so the lookup stays pure).

use super::SpecError;
use super::oci;

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Malformed lines are skipped, as libc's getpwent does.
pub(crate) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].trim().parse().ok()?,
                gid: fields[3].trim().parse().ok()?,
                home: fields.get(5).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

pub(crate) fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].trim().parse().ok()?,
                members: fields
                    .get(3)
                    .copied()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// What the security context asks for, already taken out of the proto.
#[derive(Debug, Default)]
pub(crate) struct UserRequest<'a> {
    pub run_as_user: Option<i64>,
    pub run_as_username: &'a str,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: &'a [i64],
    /// Strict: leave out the groups the image's /etc/group lists the user in.
    pub strict: bool,
    pub image_user: &'a str,
}

/// The resolved identity plus the home directory, for a default `HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub user: oci::User,
    pub home: Option<String>,
}

fn id(value: i64, what: &str) -> Result<u32, SpecError> {
    u32::try_from(value)
        .map_err(|_| SpecError::InvalidArgument(format!("{what} {value} is not a valid id")))
}

pub(crate) fn resolve_user(
    request: &UserRequest<'_>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    // A group alone would silently run as root: containerd refuses it too.
    if request.run_as_group.is_some()
        && request.run_as_user.is_none()
        && request.run_as_username.is_empty()
    {
        return Err(SpecError::InvalidArgument(
            "run_as_group is set without run_as_user or run_as_username".to_string(),
        ));
    }
    let passwd_entries = passwd.map(parse_passwd).unwrap_or_default();
    let group_entries = group.map(parse_group).unwrap_or_default();

    // The security context wins over the image's `User` as a whole.
    let (user_part, group_part): (UserSpec, Option<String>) = if let Some(uid) = request.run_as_user
    {
        (UserSpec::Id(id(uid, "run_as_user")?), None)
    } else if !request.run_as_username.is_empty() {
        (UserSpec::Name(request.run_as_username.to_string()), None)
    } else {
        let (u, g) = match request.image_user.split_once(':') {
            Some((u, g)) => (u, Some(g.to_string())),
            None => (request.image_user, None),
        };
        let user = if u.is_empty() {
            UserSpec::Id(0)
        } else if let Ok(uid) = u.parse::<u32>() {
            UserSpec::Id(uid)
        } else {
            UserSpec::Name(u.to_string())
        };
        (user, g.filter(|g| !g.is_empty()))
    };

    let entry = match &user_part {
        UserSpec::Id(uid) => passwd_entries.iter().find(|e| e.uid == *uid),
        UserSpec::Name(name) => Some(passwd_entries.iter().find(|e| &e.name == name).ok_or_else(
            || {
                let why = if passwd.is_some() {
                    "is not in the image's /etc/passwd"
                } else {
                    "cannot be looked up: the image has no /etc/passwd"
                };
                SpecError::InvalidArgument(format!("user {name:?} {why}"))
            },
        )?),
    };
    let uid = match &user_part {
        UserSpec::Id(uid) => *uid,
        UserSpec::Name(_) => entry.map(|e| e.uid).unwrap_or_default(),
    };
    // An unknown numeric uid gets gid 0, as in Docker and containerd.
    let mut gid = entry.map(|e| e.gid).unwrap_or(0);
    if let Some(g) = &group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries
                .iter()
                .find(|e| &e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    SpecError::InvalidArgument(format!(
                        "group {g:?} is not in the image's /etc/group"
                    ))
                })?,
        };
    }
    if let Some(g) = request.run_as_group {
        gid = id(g, "run_as_group")?;
    }

    // The primary group comes first, as initgroups(3) would set it.
    let mut additional = vec![gid];
    if !request.strict
        && let Some(name) = entry.map(|e| e.name.as_str())
    {
        for g in &group_entries {
            if g.members.iter().any(|m| m == name) {
                additional.push(g.gid);
            }
        }
    }
    for g in request.supplemental_groups {
        additional.push(id(*g, "supplemental group")?);
    }
    let mut seen = std::collections::HashSet::new();
    additional.retain(|g| seen.insert(*g));

    Ok(ResolvedUser {
        user: oci::User {
            uid,
            gid,
            umask: None,
            additional_gids: additional,
        },
        home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
    })
}

enum UserSpec {
    Id(u32),
    Name(String),
}
