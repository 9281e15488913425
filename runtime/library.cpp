// runtime/library.cpp — libtally.so's own translation unit.
//
// A CMake library needs at least one source of its own; everything
// libtally.so holds comes from the folder libraries linked into it whole
// (runtime/CMakeLists.txt).
