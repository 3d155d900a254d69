use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use crate::{Backend, Error, Result, check_key, check_prefix, slice_range};

/// The in-memory reference backend. Cloning shares the same objects.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    objects: Arc<RwLock<BTreeMap<String, Arc<Vec<u8>>>>>,
}

impl MemoryBackend {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Vec<u8>>>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Vec<u8>>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn cheap_stat(&self) -> bool {
        true
    }

    fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        self.write().insert(key.to_string(), Arc::new(data));
        Ok(())
    }

    fn put_new(&self, key: &str, data: Vec<u8>) -> Result<()> {
        check_key(key)?;
        let mut objects = self.write();
        if objects.contains_key(key) {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        objects.insert(key.to_string(), Arc::new(data));
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        match self.read().get(key) {
            Some(data) => Ok(data.as_ref().clone()),
            None => Err(Error::NotFound {
                key: key.to_string(),
            }),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        check_key(key)?;
        let data = self
            .read()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })?;
        slice_range(key, &data, range)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        Ok(self.read().get(key).map(|d| d.len() as u64))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        check_prefix(prefix)?;
        Ok(self
            .read()
            .range(prefix.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        check_prefix(prefix)?;
        Ok(self
            .read()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, d)| (k.clone(), d.len() as u64))
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.write().remove(key);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}
