// Catch2 v2 runner of the ISA test executables (tests/isa): each executable defines
// smoe_isa_supported(); on a CPU without the instructions it tests, the runner exits with 77, which
// ctest reports as Skipped (SKIP_RETURN_CODE), not as passed. Listing the cases needs no such CPU, so
// discovery and the `.discovery` check work on every x86-64 build machine.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <iostream>

// Whether this CPU runs the executable's code; *needs names the instructions for the skip message.
bool smoe_isa_supported(char const** needs);

int main(int argc, char* argv[]) {
    Catch::Session session;
    if (int const rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
    auto const& cfg = session.configData();
    bool const listing = cfg.listTests || cfg.listTestNamesOnly || cfg.listTags || cfg.listReporters || cfg.showHelp;
    char const* needs = "";
    if (!listing && !smoe_isa_supported(&needs)) {
        std::cerr << argv[0] << ": this CPU lacks " << needs << "; skipping (exit 77)\n";
        return 77;
    }
    return session.run();
}
