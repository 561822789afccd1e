//! What a principal may do, one capability per kind of call.

use std::fmt;

use serde::Deserialize;

/// A kind of call a principal may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// CAS and ByteStream reads, GetActionResult.
    Read,
    /// CAS and ByteStream writes.
    Write,
    /// UpdateActionResult.
    AcWrite,
    /// Execute, WaitExecution and the operations of its instances.
    Execute,
    /// BuildService.
    Build,
    /// Everything, in the principal's instances.
    Admin,
    /// The worker protocol; implies read, write and ac-write.
    Worker,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Read,
        Capability::Write,
        Capability::AcWrite,
        Capability::Execute,
        Capability::Build,
        Capability::Admin,
        Capability::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Read => "read",
            Capability::Write => "write",
            Capability::AcWrite => "ac-write",
            Capability::Execute => "execute",
            Capability::Build => "build",
            Capability::Admin => "admin",
            Capability::Worker => "worker",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The capabilities a principal holds, with what each implies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilitySet(u8);

impl CapabilitySet {
    /// The set granted by `capabilities`: admin implies every capability,
    /// worker implies read, write and ac-write.
    pub fn granting(capabilities: &[Capability]) -> Self {
        let mut bits = 0;
        for capability in capabilities {
            bits |= match capability {
                Capability::Admin => Capability::ALL.iter().fold(0, |b, c| b | c.bit()),
                Capability::Worker => {
                    Capability::Worker.bit()
                        | Capability::Read.bit()
                        | Capability::Write.bit()
                        | Capability::AcWrite.bit()
                }
                other => other.bit(),
            };
        }
        CapabilitySet(bits)
    }

    pub fn contains(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_all_and_worker_implies_storage() {
        let admin = CapabilitySet::granting(&[Capability::Admin]);
        assert!(Capability::ALL.iter().all(|c| admin.contains(*c)));
        let worker = CapabilitySet::granting(&[Capability::Worker]);
        assert!(worker.contains(Capability::Read) && worker.contains(Capability::Write));
        assert!(worker.contains(Capability::AcWrite));
        assert!(!worker.contains(Capability::Execute) && !worker.contains(Capability::Build));
        let read = CapabilitySet::granting(&[Capability::Read]);
        assert!(read.contains(Capability::Read) && !read.contains(Capability::Write));
    }
}
