/* A minimal real WasmEdge plugin (C API, WasmEdge 0.14): one module, "agentd_e2e", with one host
 * function, answer() -> i32 42. Built with -DAGENTD_E2E_NEEDS_DEP, it also calls a function of its
 * own shared library (dep.c), so that loading it fails when that library is missing. */
#include <stddef.h>
#include <stdint.h>
#include <wasmedge/wasmedge.h>

#ifdef AGENTD_E2E_NEEDS_DEP
extern int32_t agentd_e2e_dep_answer(void);
#define PLUGIN_NAME "agentd_e2e_nodep"
#define PLUGIN_MODULE "agentd_e2e_nodep"
#else
#define PLUGIN_NAME "agentd_e2e"
#define PLUGIN_MODULE "agentd_e2e"
#endif

static WasmEdge_Result answer(void *data, const WasmEdge_CallingFrameContext *frame,
                              const WasmEdge_Value *params, WasmEdge_Value *returns) {
  (void)data;
  (void)frame;
  (void)params;
#ifdef AGENTD_E2E_NEEDS_DEP
  returns[0] = WasmEdge_ValueGenI32(agentd_e2e_dep_answer());
#else
  returns[0] = WasmEdge_ValueGenI32(42);
#endif
  return WasmEdge_Result_Success;
}

static WasmEdge_ModuleInstanceContext *create(const struct WasmEdge_ModuleDescriptor *desc) {
  (void)desc;
  WasmEdge_String name = WasmEdge_StringCreateByCString(PLUGIN_MODULE);
  WasmEdge_ModuleInstanceContext *module = WasmEdge_ModuleInstanceCreate(name);
  WasmEdge_StringDelete(name);
  if (module == NULL) {
    return NULL;
  }
  WasmEdge_ValType returns[1] = {WasmEdge_ValTypeGenI32()};
  WasmEdge_FunctionTypeContext *type = WasmEdge_FunctionTypeCreate(NULL, 0, returns, 1);
  WasmEdge_FunctionInstanceContext *function = WasmEdge_FunctionInstanceCreate(type, answer, NULL, 0);
  WasmEdge_FunctionTypeDelete(type);
  WasmEdge_String function_name = WasmEdge_StringCreateByCString("answer");
  WasmEdge_ModuleInstanceAddFunction(module, function_name, function);
  WasmEdge_StringDelete(function_name);
  return module;
}

static WasmEdge_ModuleDescriptor modules[] = {
    {.Name = PLUGIN_MODULE, .Description = "agentd end-to-end test module", .Create = create},
};

static const WasmEdge_PluginDescriptor descriptor = {
    .Name = PLUGIN_NAME,
    .Description = "agentd end-to-end test plugin",
    .APIVersion = WasmEdge_Plugin_CurrentAPIVersion,
    .Version = {.Major = 0, .Minor = 1, .Patch = 0, .Build = 0},
    .ModuleCount = 1,
    .ProgramOptionCount = 0,
    .ModuleDescriptions = modules,
    .ProgramOptions = NULL,
};

WASMEDGE_CAPI_PLUGIN_EXPORT const WasmEdge_PluginDescriptor *WasmEdge_Plugin_GetDescriptor(void) {
  return &descriptor;
}
