/* The plugin's own shared library (libagentde2edep.so): left out of the plugin directory and the
 * loader's path, it is the "plugin whose own library is missing" of issue 13. */
#include <stdint.h>

int32_t agentd_e2e_dep_answer(void) { return 42; }
