/*
 * TEST DOUBLE: a fake NVML (libnvidia-ml.so.1) for the enclave.llm unit tests.
 *
 * It stands in for the NVIDIA driver's management library on machines with no
 * GPU. pynvml loads it exactly as it loads the real one (CDLL("libnvidia-ml.so.1")
 * found through LD_LIBRARY_PATH, or a CDLL of this file's path), and calls the same
 * C entry points with the same argument and struct layouts, so gpu_facts and
 * gpu_check run their real pynvml code path against it.
 *
 * The environment variable FAKE_NVML_SCENARIO, read at nvmlInit, picks the host:
 *   healthy      2x H100 80GB HBM3, ECC on, persistence on, 18 NVLinks each
 *   ecc          as healthy, GPU 1 has uncorrectable ECC errors, retired pages, a remapped row
 *   hot          as healthy, GPU 0 at 91 C and persistence off
 *   mig          1x A100-SXM4-80GB in MIG mode with two MIG devices (3g.40gb, 2g.20gb)
 *   unsupported  1x GeForce RTX 4090: ECC, retired pages, remapped rows, MIG, NVLink and
 *                power limit answer NVML_ERROR_NOT_SUPPORTED
 *   lost         1x H100 whose temperature query answers NVML_ERROR_GPU_IS_LOST
 *   no_driver    nvmlInit answers NVML_ERROR_DRIVER_NOT_LOADED
 * Only what gpu_facts reads is implemented; nothing here talks to hardware.
 */
#include <stdlib.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NS (-1)          /* "not supported" marker in the tables below */
#define MAX_GPUS 4
#define MAX_MIG 7
#define GIB (1024ULL * 1024ULL * 1024ULL)
#define MIB (1024ULL * 1024ULL)

typedef struct fake_dev {
    int is_mig;
    const char *name, *uuid, *bus_id;
    unsigned pci_device_id;
    unsigned long long mem_total, mem_used;
    int temp, power_mw, power_limit_mw, util_gpu, util_mem;
    int ecc_mode;                       /* NS, 0, 1 */
    long long ecc_vol_unc, ecc_agg_unc;
    int retired_sbe, retired_dbe, retired_pending; /* NS = no page retirement */
    int remap_corr, remap_unc, remap_pending, remap_failure; /* remap_corr NS = no row remapping */
    int persistence, compute_mode;
    int mig_mode;                       /* NS, 0, 1 */
    int mig_count;
    int nvlinks;                        /* links present; 0 = no NVLink */
    int gi_id, ci_id;
    int temp_lost;
    struct fake_dev *mig[MAX_MIG];
} fake_dev_t;

typedef fake_dev_t *nvmlDevice_t;

typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned gpu, memory; } nvmlUtilization_t;

static int initialized;
static int gpu_count;
static fake_dev_t gpus[MAX_GPUS];
static fake_dev_t migs[MAX_MIG];
static const char *driver_version = "550.90.07";
static int cuda_version = 12040;

static void h100(fake_dev_t *d, int i) {
    static const char *uuids[] = {"GPU-6a1f0c2e-0000-4000-8000-000000000000", "GPU-6a1f0c2e-0000-4000-8000-000000000001",
                                  "GPU-6a1f0c2e-0000-4000-8000-000000000002", "GPU-6a1f0c2e-0000-4000-8000-000000000003"};
    static const char *buses[] = {"00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0"};
    memset(d, 0, sizeof(*d));
    d->name = "NVIDIA H100 80GB HBM3";
    d->uuid = uuids[i];
    d->bus_id = buses[i];
    d->pci_device_id = 0x233010DE;
    d->mem_total = 81559ULL * MIB;
    d->mem_used = 555ULL * MIB;
    d->temp = 34;
    d->power_mw = 71000;
    d->power_limit_mw = 700000;
    d->util_gpu = 0;
    d->util_mem = 0;
    d->ecc_mode = 1;
    d->retired_sbe = NS;               /* Hopper uses row remapping, not page retirement */
    d->remap_corr = 0;
    d->persistence = 1;
    d->compute_mode = 0;
    d->mig_mode = 0;
    d->nvlinks = 18;
}

static void load_scenario(const char *s) {
    memset(gpus, 0, sizeof(gpus));
    memset(migs, 0, sizeof(migs));
    gpu_count = 0;
    if (strcmp(s, "healthy") == 0 || strcmp(s, "ecc") == 0 || strcmp(s, "hot") == 0) {
        gpu_count = 2;
        h100(&gpus[0], 0);
        h100(&gpus[1], 1);
        if (strcmp(s, "ecc") == 0) {
            gpus[1].ecc_vol_unc = 2;
            gpus[1].ecc_agg_unc = 5;
            gpus[1].remap_unc = 1;
            gpus[1].remap_pending = 1;
        }
        if (strcmp(s, "hot") == 0) {
            gpus[0].temp = 91;
            gpus[0].persistence = 0;
        }
    } else if (strcmp(s, "mig") == 0) {
        fake_dev_t *d = &gpus[0];
        gpu_count = 1;
        memset(d, 0, sizeof(*d));
        d->name = "NVIDIA A100-SXM4-80GB";
        d->uuid = "GPU-a100a100-0000-4000-8000-000000000000";
        d->bus_id = "00000000:07:00.0";
        d->pci_device_id = 0x20B210DE;
        d->mem_total = 81920ULL * MIB;
        d->mem_used = 60ULL * MIB;
        d->temp = 30;
        d->power_mw = 60000;
        d->power_limit_mw = 400000;
        d->ecc_mode = 1;
        d->retired_sbe = 0;
        d->remap_corr = 0;
        d->persistence = 1;
        d->mig_mode = 1;
        d->mig_count = 2;
        d->nvlinks = 12;
        migs[0] = (fake_dev_t){.is_mig = 1, .name = "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
                               .uuid = "MIG-11111111-0000-4000-8000-000000000000",
                               .mem_total = 40192ULL * MIB, .mem_used = 13ULL * MIB, .gi_id = 1, .ci_id = 0};
        migs[1] = (fake_dev_t){.is_mig = 1, .name = "NVIDIA A100-SXM4-80GB MIG 2g.20gb",
                               .uuid = "MIG-22222222-0000-4000-8000-000000000000",
                               .mem_total = 19968ULL * MIB, .mem_used = 11ULL * MIB, .gi_id = 3, .ci_id = 0};
        d->mig[0] = &migs[0];
        d->mig[1] = &migs[1];
    } else if (strcmp(s, "unsupported") == 0) {
        fake_dev_t *d = &gpus[0];
        gpu_count = 1;
        memset(d, 0, sizeof(*d));
        d->name = "NVIDIA GeForce RTX 4090";
        d->uuid = "GPU-40904090-0000-4000-8000-000000000000";
        d->bus_id = "00000000:01:00.0";
        d->pci_device_id = 0x268410DE;
        d->mem_total = 24564ULL * MIB;
        d->mem_used = 300ULL * MIB;
        d->temp = 41;
        d->power_mw = 25000;
        d->power_limit_mw = NS;
        d->util_gpu = 3;
        d->util_mem = 1;
        d->ecc_mode = NS;
        d->retired_sbe = NS;
        d->remap_corr = NS;
        d->persistence = 1;
        d->mig_mode = NS;
        d->nvlinks = 0;
    } else if (strcmp(s, "lost") == 0) {
        gpu_count = 1;
        h100(&gpus[0], 0);
        gpus[0].temp_lost = 1;
    }
}

static int valid(nvmlDevice_t d) {
    if (!initialized) return 0;
    for (int i = 0; i < MAX_GPUS; i++) if (d == &gpus[i] && i < gpu_count) return 1;
    for (int i = 0; i < MAX_MIG; i++) if (d == &migs[i] && migs[i].is_mig) return 1;
    return 0;
}
#define CHECK(d) do { if (!initialized) return NVML_ERROR_UNINITIALIZED; if (!valid(d)) return NVML_ERROR_INVALID_ARGUMENT; } while (0)
#define PHYSICAL_ONLY(d) do { if ((d)->is_mig) return NVML_ERROR_NOT_SUPPORTED; } while (0)

static void copy(char *dst, unsigned len, const char *src) {
    if (len == 0) return;
    strncpy(dst, src ? src : "", len - 1);
    dst[len - 1] = '\0';
}

int nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    const char *s = getenv("FAKE_NVML_SCENARIO");
    if (s == NULL) s = "healthy";
    if (strcmp(s, "no_driver") == 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    load_scenario(s);
    initialized = 1;
    return NVML_SUCCESS;
}
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { initialized = 0; return NVML_SUCCESS; }

const char *nvmlErrorString(int r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *v, unsigned len) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    copy(v, len, driver_version);
    return NVML_SUCCESS;
}
int nvmlSystemGetNVMLVersion(char *v, unsigned len) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    copy(v, len, "12.550.90.07");
    return NVML_SUCCESS;
}
int nvmlSystemGetCudaDriverVersion(int *v) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *v = cuda_version;
    return NVML_SUCCESS;
}
int nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

int nvmlDeviceGetCount_v2(unsigned *c) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *c = (unsigned)gpu_count;
    return NVML_SUCCESS;
}
int nvmlDeviceGetHandleByIndex_v2(unsigned i, nvmlDevice_t *d) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (i >= (unsigned)gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *d = &gpus[i];
    return NVML_SUCCESS;
}
int nvmlDeviceGetName(nvmlDevice_t d, char *n, unsigned len) { CHECK(d); copy(n, len, d->name); return NVML_SUCCESS; }
int nvmlDeviceGetUUID(nvmlDevice_t d, char *u, unsigned len) { CHECK(d); copy(u, len, d->uuid); return NVML_SUCCESS; }
int nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) {
    CHECK(d);
    PHYSICAL_ONLY(d);
    memset(p, 0, sizeof(*p));
    copy(p->busId, sizeof(p->busId), d->bus_id);
    copy(p->busIdLegacy, sizeof(p->busIdLegacy), d->bus_id + 4);
    p->pciDeviceId = d->pci_device_id;
    return NVML_SUCCESS;
}
int nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    CHECK(d);
    m->total = d->mem_total;
    m->used = d->mem_used;
    m->free = d->mem_total - d->mem_used;
    return NVML_SUCCESS;
}
int nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned *t) {
    CHECK(d);
    PHYSICAL_ONLY(d);
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->temp_lost) return NVML_ERROR_GPU_IS_LOST;
    *t = (unsigned)d->temp;
    return NVML_SUCCESS;
}
int nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned *p) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->power_mw == NS) return NVML_ERROR_NOT_SUPPORTED;
    *p = (unsigned)d->power_mw;
    return NVML_SUCCESS;
}
int nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned *p) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->power_limit_mw == NS) return NVML_ERROR_NOT_SUPPORTED;
    *p = (unsigned)d->power_limit_mw;
    return NVML_SUCCESS;
}
int nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->util_gpu == NS) return NVML_ERROR_NOT_SUPPORTED;
    u->gpu = (unsigned)d->util_gpu;
    u->memory = (unsigned)d->util_mem;
    return NVML_SUCCESS;
}
int nvmlDeviceGetEccMode(nvmlDevice_t d, int *cur, int *pend) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->ecc_mode == NS) return NVML_ERROR_NOT_SUPPORTED;
    *cur = d->ecc_mode;
    *pend = d->ecc_mode;
    return NVML_SUCCESS;
}
int nvmlDeviceGetTotalEccErrors(nvmlDevice_t d, int error_type, int counter_type, unsigned long long *c) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->ecc_mode == NS) return NVML_ERROR_NOT_SUPPORTED;
    if (error_type == 1) *c = (unsigned long long)(counter_type == 0 ? d->ecc_vol_unc : d->ecc_agg_unc);
    else *c = 0;
    return NVML_SUCCESS;
}
int nvmlDeviceGetRetiredPages(nvmlDevice_t d, int cause, unsigned *count, unsigned long long *addresses) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->retired_sbe == NS) return NVML_ERROR_NOT_SUPPORTED;
    unsigned n = (unsigned)(cause == 0 ? d->retired_sbe : d->retired_dbe);
    if (addresses == NULL) { unsigned have = *count; *count = n; return (n > have) ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS; }
    if (*count < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    for (unsigned i = 0; i < n; i++) addresses[i] = 0x1000ULL * (i + 1);
    *count = n;
    return NVML_SUCCESS;
}
int nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t d, int *pending) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->retired_sbe == NS) return NVML_ERROR_NOT_SUPPORTED;
    *pending = d->retired_pending;
    return NVML_SUCCESS;
}
int nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned *corr, unsigned *unc, unsigned *pending, unsigned *failure) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->remap_corr == NS) return NVML_ERROR_NOT_SUPPORTED;
    *corr = (unsigned)d->remap_corr;
    *unc = (unsigned)d->remap_unc;
    *pending = (unsigned)d->remap_pending;
    *failure = (unsigned)d->remap_failure;
    return NVML_SUCCESS;
}
int nvmlDeviceGetPersistenceMode(nvmlDevice_t d, int *m) { CHECK(d); PHYSICAL_ONLY(d); *m = d->persistence; return NVML_SUCCESS; }
int nvmlDeviceGetComputeMode(nvmlDevice_t d, int *m) { CHECK(d); PHYSICAL_ONLY(d); *m = d->compute_mode; return NVML_SUCCESS; }
int nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned *cur, unsigned *pend) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->mig_mode == NS) return NVML_ERROR_NOT_SUPPORTED;
    *cur = (unsigned)d->mig_mode;
    *pend = (unsigned)d->mig_mode;
    return NVML_SUCCESS;
}
int nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned *c) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->mig_mode == NS) return NVML_ERROR_NOT_SUPPORTED;
    *c = MAX_MIG;
    return NVML_SUCCESS;
}
int nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned i, nvmlDevice_t *m) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->mig_mode == NS) return NVML_ERROR_NOT_SUPPORTED;
    if (i >= MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->mig[i] == NULL) return NVML_ERROR_NOT_FOUND;
    *m = d->mig[i];
    return NVML_SUCCESS;
}
int nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned *id) {
    CHECK(d);
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)d->gi_id;
    return NVML_SUCCESS;
}
int nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned *id) {
    CHECK(d);
    if (!d->is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *id = (unsigned)d->ci_id;
    return NVML_SUCCESS;
}
int nvmlDeviceGetNvLinkState(nvmlDevice_t d, unsigned link, unsigned *active) {
    CHECK(d); PHYSICAL_ONLY(d);
    if (d->nvlinks == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (link >= (unsigned)d->nvlinks) return NVML_ERROR_INVALID_ARGUMENT;
    *active = 1;
    return NVML_SUCCESS;
}
