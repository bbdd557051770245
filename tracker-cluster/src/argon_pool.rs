//! A fixed pool of OS threads that hash and verify passwords with
//! argon2id, each reusing one memory block set for its whole life.
//!
//! Why not `Argon2::default().hash_password` on tokio's blocking pool: each
//! call allocates the ~19 MiB of blocks (m = 19456 KiB) and frees them.
//! glibc serves such allocations from whichever arena the calling thread
//! is attached to and keeps the freed memory there, so a burst of
//! registrations spread over many blocking threads left the leader at
//! hundreds of MiB of RSS for good. Here `threads` threads each allocate
//! their blocks once, so argon2 holds exactly `threads` x 19 MiB,
//! whatever the load.
//!
//! Jobs arrive over a bounded channel (callers wait when it is full) and
//! answer over a oneshot. Hashing writes the PHC string itself (same
//! format as the `argon2` crate's `PasswordHasher`); verifying parses the
//! PHC, takes its parameters and salt, hashes into the reused memory and
//! compares in constant time (`password_hash::Output`'s `PartialEq`). A
//! PHC whose parameters need more memory than a thread holds is refused
//! rather than allocated for.
//!
//! A thread allocates its blocks at its first job (a follower never
//! hashes, so never holds them). The threads stop when the pool (every
//! sender) is dropped.

use std::sync::{Arc, Mutex, OnceLock};

use argon2::{
    password_hash::{rand_core::OsRng, Output, ParamsString, SaltString},
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
};
use tokio::sync::{mpsc, oneshot};

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("argon2: {0}")]
    Argon(String),
    #[error("the argon2 pool has stopped")]
    Stopped,
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, PoolError>>,
    },
    /// `phc: None` verifies against a dummy hash (an unknown user costs
    /// the same as a wrong password) and answers false.
    Verify {
        phc: Option<String>,
        password: String,
        reply: oneshot::Sender<bool>,
    },
}

/// The handle: cheap to clone, shared by the API tasks.
#[derive(Clone)]
pub struct ArgonPool {
    tx: mpsc::Sender<Job>,
}

impl ArgonPool {
    /// Starts `threads` hashing threads (at least one) with the default
    /// argon2id parameters and a queue of `queue` jobs.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Self> {
        Self::with_params(threads, queue, Params::default())
    }

    /// [`ArgonPool::start`] with given parameters (tests use small ones).
    pub fn with_params(threads: usize, queue: usize, params: Params) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(rx, params))?;
        }
        Ok(ArgonPool { tx })
    }

    /// Hashes `password` with a fresh random salt; returns the PHC string.
    pub async fn hash(&self, password: String) -> Result<String, PoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Hash { password, reply })
            .await
            .map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)?
    }

    /// Whether `password` matches `phc`; `None` costs the same and is
    /// false.
    pub async fn verify(&self, phc: Option<String>, password: String) -> Result<bool, PoolError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Verify { phc, password, reply })
            .await
            .map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)
    }
}

fn worker(rx: Arc<Mutex<mpsc::Receiver<Job>>>, params: Params) {
    // Allocated at the first job, so a member that never leads (and so
    // never hashes) never holds the blocks.
    let mut hasher: Option<Hasher> = None;
    loop {
        // One thread waits on the channel, the others on the lock.
        let job = {
            let Ok(mut rx) = rx.lock() else { return };
            rx.blocking_recv()
        };
        let Some(job) = job else { return };
        let hasher = hasher.get_or_insert_with(|| Hasher::new(params.clone()));
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(hasher.hash(password.as_bytes()));
            }
            Job::Verify { phc, password, reply } => {
                let ok = match &phc {
                    Some(phc) => hasher.verify(phc, password.as_bytes()),
                    None => {
                        let dummy = hasher.dummy();
                        let _ = hasher.verify(dummy, password.as_bytes());
                        false
                    }
                };
                let _ = reply.send(ok);
            }
        }
    }
}

/// One thread's argon2 state: the parameters and the reused blocks.
pub struct Hasher {
    params: Params,
    blocks: Vec<Block>,
}

impl Hasher {
    /// Allocates the blocks for `params` once.
    pub fn new(params: Params) -> Self {
        let blocks = vec![Block::default(); params.block_count()];
        Hasher { params, blocks }
    }

    /// argon2id PHC string of `password` with a fresh random salt.
    pub fn hash(&mut self, password: &[u8]) -> Result<String, PoolError> {
        let salt = SaltString::generate(&mut OsRng);
        self.hash_with_salt(password, &salt)
    }

    fn hash_with_salt(&mut self, password: &[u8], salt: &SaltString) -> Result<String, PoolError> {
        let err = |e: &dyn std::fmt::Display| PoolError::Argon(e.to_string());
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf).map_err(|e| err(&e))?;
        let len = self.params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..len];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password_into_with_memory(password, salt_bytes, out, &mut self.blocks)
            .map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| err(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string `phc` (any argon2
    /// variant and version); false for a malformed PHC or one that needs
    /// more memory than this hasher holds.
    pub fn verify(&mut self, phc: &str, password: &[u8]) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
            return false;
        };
        let version = match hash.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let Ok(params) = Params::try_from(&hash) else {
            return false;
        };
        if params.block_count() > self.blocks.len() {
            tracing::warn!(
                m_cost = params.m_cost(),
                "a stored password hash needs more memory than the argon2 pool holds"
            );
            return false;
        }
        let mut salt_buf = [0u8; 64];
        let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..expected.len()];
        if Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt_bytes, out, &mut self.blocks)
            .is_err()
        {
            return false;
        }
        // Output compares in constant time.
        Output::new(out).is_ok_and(|o| o == expected)
    }

    /// A PHC string to verify unknown users against, made once per
    /// process with these parameters.
    fn dummy(&mut self) -> &'static str {
        static DUMMY: OnceLock<String> = OnceLock::new();
        if let Some(d) = DUMMY.get() {
            return d;
        }
        let made = self.hash(b"quorrent-dummy").unwrap_or_default();
        DUMMY.get_or_init(|| made)
    }
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    /// Small parameters so the tests run fast; the code path is the same.
    fn small() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn pool_hash_verifies_with_the_argon2_crate_and_back() {
        let mut h = Hasher::new(small());
        let phc = h.hash(b"correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"wrong", &parsed).is_err());

        // The crate's own hash (its default parameters) verifies here.
        let mut big = Hasher::new(Params::default());
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        assert!(big.verify(&theirs, b"pw"));
        assert!(!big.verify(&theirs, b"pW"));
        // And the same salt gives the same string byte for byte.
        assert_eq!(big.hash_with_salt(b"pw", &salt).unwrap(), theirs);
    }

    #[test]
    fn refuses_malformed_and_oversized() {
        let mut h = Hasher::new(small());
        assert!(!h.verify("not a phc", b"x"));
        assert!(!h.verify("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ", b"x"));
        // Needs 19 MiB, this hasher holds 64 KiB: refused, not allocated.
        let mut big = Hasher::new(Params::default());
        let phc = big.hash(b"pw").unwrap();
        assert!(!h.verify(&phc, b"pw"));
    }

    #[tokio::test]
    async fn pool_answers_many_jobs_with_two_threads() {
        let pool = ArgonPool::with_params(2, 4, small()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let pw = format!("pw{i}");
                let phc = pool.hash(pw.clone()).await.unwrap();
                assert!(pool.verify(Some(phc.clone()), pw).await.unwrap());
                assert!(!pool.verify(Some(phc), "other".into()).await.unwrap());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(!pool.verify(None, "x".into()).await.unwrap());
    }
}
