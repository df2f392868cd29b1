# Run by `cmake --install` and by cpack (install(SCRIPT)): writes the systemd unit and the default
# config with the paths of the prefix being installed to, so that a .deb built with prefix /usr
# and a `cmake --install --prefix /opt/winch` both get a unit that names their own binary.
# An existing config is never overwritten by a plain install (the package marks it a conffile).
set(_src "@PROJECT_SOURCE_DIR@/deploy")
set(_prefix "${CMAKE_INSTALL_PREFIX}")
if(_prefix STREQUAL "/usr")
  set(_sysconf "/etc")
else()
  set(_sysconf "${_prefix}/etc")
endif()
set(_dest "$ENV{DESTDIR}")

file(READ "${_src}/systemd/winch.service.in" _unit)
string(REPLACE "%BINDIR%" "${_prefix}/bin" _unit "${_unit}")
string(REPLACE "%SYSCONFDIR%" "${_sysconf}" _unit "${_unit}")
file(WRITE "${_dest}${_prefix}/lib/systemd/system/winch.service" "${_unit}")
message(STATUS "Installing: ${_dest}${_prefix}/lib/systemd/system/winch.service")

set(_cfg "${_dest}${_sysconf}/winch/config.json")
if(EXISTS "${_cfg}")
  message(STATUS "Keeping: ${_cfg} (exists)")
else()
  # file(INSTALL) adds DESTDIR itself.
  file(INSTALL "${_src}/config.json" DESTINATION "${_sysconf}/winch"
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endif()
