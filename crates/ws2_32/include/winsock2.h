/*
 * winsock2.h: the Winsock socket-sharing interface of sockshare, for Linux.
 *
 * C code written for Windows' WSADuplicateSocket builds here unchanged in its sharing
 * logic:
 *
 *     cargo build --release -p ws2_32
 *     cc app.c -Icrates/ws2_32/include -Ltarget/release -lws2_32 \
 *        -Wl,-rpath,"$PWD/target/release"
 *
 * The functions live in libws2_32.so / libws2_32.a (the Rust crate crates/ws2_32); the
 * declarations below mirror its Rust definitions (src/types.rs), and the crate's tests
 * check every constant, size and offset of this file against them.
 *
 * Differences from Windows, deliberate and documented:
 * - SOCKET holds a Linux file descriptor; read, write, poll and the BSD socket calls work
 *   on it, and the socket API comes from the system headers this file includes.
 * - iAddressFamily, iSocketType and iProtocol carry this platform's numbers (AF_INET6 is
 *   10 here), so use AF_INET6, never 23.
 * - An info works once, and only in the process it was made for.
 * - FIONBIO and FIONREAD have Linux's values; ioctlsocket also accepts Windows' numbers.
 * - WCHAR is 16 bits (uint16_t), as on Windows, not wchar_t.
 */
#ifndef SOCKSHARE_WINSOCK2_H
#define SOCKSHARE_WINSOCK2_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <netinet/in.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef WSAAPI
#define WSAAPI
#endif
#ifndef FAR
#define FAR
#endif

typedef uint8_t BYTE;
typedef uint16_t WORD;
typedef uint32_t DWORD; /* Windows' unsigned long is 32 bits */
typedef uint16_t WCHAR; /* UTF-16 code unit on every platform, not wchar_t */
typedef uintptr_t SOCKET;
typedef unsigned int GROUP;

/* BSD's short names, which Windows code uses (u_long for ioctlsocket): glibc's
   <sys/types.h> declares them unless a strict standard mode (-std=c11) hides them;
   then they are declared here, with the same types. */
#if defined(__GLIBC__) && !defined(__USE_MISC)
typedef unsigned char u_char;
typedef unsigned short u_short;
typedef unsigned int u_int;
typedef unsigned long u_long;
#endif

#define INVALID_SOCKET (SOCKET)(~0)
#define SOCKET_ERROR (-1)

#define MAKEWORD(low, high) ((WORD)(((BYTE)((low) & 0xff)) | ((WORD)((BYTE)((high) & 0xff))) << 8))
#define LOBYTE(w) ((BYTE)((w) & 0xff))
#define HIBYTE(w) ((BYTE)(((w) >> 8) & 0xff))

/* Linux's own numbers (the system headers above define them already). ioctlsocket also
   accepts Windows' 0x8004667E and 0x4004667F. */
#ifndef FIONBIO
#define FIONBIO 0x5421
#endif
#ifndef FIONREAD
#define FIONREAD 0x541B
#endif

/* shutdown's `how`, by Windows' names: the same numbers as SHUT_RD, SHUT_WR, SHUT_RDWR. */
#define SD_RECEIVE 0
#define SD_SEND 1
#define SD_BOTH 2

typedef struct _GUID {
    uint32_t Data1; /* Windows' unsigned long: 32 bits */
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} GUID;

#define WSAPROTOCOL_LEN 255
#define MAX_PROTOCOL_CHAIN 7
#define BASE_PROTOCOL 1
#define LAYERED_PROTOCOL 0
#define FROM_PROTOCOL_INFO (-1)
#define BIGENDIAN 0x0000
#define LITTLEENDIAN 0x0001
#define SECURITY_PROTOCOL_NONE 0x0000

typedef struct _WSAPROTOCOLCHAIN {
    int ChainLen;
    DWORD ChainEntries[MAX_PROTOCOL_CHAIN];
} WSAPROTOCOLCHAIN, FAR *LPWSAPROTOCOLCHAIN;

typedef struct _WSAPROTOCOL_INFOA {
    DWORD dwServiceFlags1;
    DWORD dwServiceFlags2;
    DWORD dwServiceFlags3;
    DWORD dwServiceFlags4;
    DWORD dwProviderFlags;
    GUID ProviderId;
    DWORD dwCatalogEntryId;
    WSAPROTOCOLCHAIN ProtocolChain;
    int iVersion;
    int iAddressFamily;
    int iMaxSockAddr;
    int iMinSockAddr;
    int iSocketType;
    int iProtocol;
    int iProtocolMaxOffset;
    int iNetworkByteOrder;
    int iSecurityScheme;
    DWORD dwMessageSize;
    DWORD dwProviderReserved;
    char szProtocol[WSAPROTOCOL_LEN + 1];
} WSAPROTOCOL_INFOA, FAR *LPWSAPROTOCOL_INFOA;

typedef struct _WSAPROTOCOL_INFOW {
    DWORD dwServiceFlags1;
    DWORD dwServiceFlags2;
    DWORD dwServiceFlags3;
    DWORD dwServiceFlags4;
    DWORD dwProviderFlags;
    GUID ProviderId;
    DWORD dwCatalogEntryId;
    WSAPROTOCOLCHAIN ProtocolChain;
    int iVersion;
    int iAddressFamily;
    int iMaxSockAddr;
    int iMinSockAddr;
    int iSocketType;
    int iProtocol;
    int iProtocolMaxOffset;
    int iNetworkByteOrder;
    int iSecurityScheme;
    DWORD dwMessageSize;
    DWORD dwProviderReserved;
    WCHAR szProtocol[WSAPROTOCOL_LEN + 1];
} WSAPROTOCOL_INFOW, FAR *LPWSAPROTOCOL_INFOW;

#define WSADESCRIPTION_LEN 256
#define WSASYS_STATUS_LEN 128

/* Windows' 64-bit layout: the shorts and the pointer come before the strings. */
typedef struct WSAData {
    WORD wVersion;
    WORD wHighVersion;
    unsigned short iMaxSockets;
    unsigned short iMaxUdpDg;
    char FAR *lpVendorInfo;
    char szDescription[WSADESCRIPTION_LEN + 1];
    char szSystemStatus[WSASYS_STATUS_LEN + 1];
} WSADATA, FAR *LPWSADATA;

#ifdef __cplusplus
#define SOCKSHARE_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define SOCKSHARE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
SOCKSHARE_STATIC_ASSERT(sizeof(GUID) == 16, "GUID is 16 bytes");
SOCKSHARE_STATIC_ASSERT(sizeof(WSAPROTOCOLCHAIN) == 32, "WSAPROTOCOLCHAIN is 32 bytes");
SOCKSHARE_STATIC_ASSERT(sizeof(WSAPROTOCOL_INFOA) == 372, "WSAPROTOCOL_INFOA is 372 bytes");
SOCKSHARE_STATIC_ASSERT(sizeof(WSAPROTOCOL_INFOW) == 628, "WSAPROTOCOL_INFOW is 628 bytes");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, ProviderId) == 20, "ProviderId at 20");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, ProtocolChain) == 40, "ProtocolChain at 40");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, iAddressFamily) == 76, "iAddressFamily at 76");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, iSocketType) == 88, "iSocketType at 88");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, iProtocol) == 92, "iProtocol at 92");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, dwProviderReserved) == 112, "dwProviderReserved at 112");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOW, szProtocol) == 116, "szProtocol at 116");
SOCKSHARE_STATIC_ASSERT(offsetof(WSAPROTOCOL_INFOA, szProtocol) == 116, "szProtocol at 116");
SOCKSHARE_STATIC_ASSERT(offsetof(WSADATA, lpVendorInfo) == 8, "lpVendorInfo at 8");
SOCKSHARE_STATIC_ASSERT(offsetof(WSADATA, szDescription) == 8 + sizeof(char *), "szDescription after lpVendorInfo");
SOCKSHARE_STATIC_ASSERT(sizeof(WSADATA) == (sizeof(char *) == 8 ? 408 : 400), "WSADATA as on Windows");

/* WSASocket flags */
#define WSA_FLAG_OVERLAPPED 0x01 /* accepted; no effect on Linux */
#define WSA_FLAG_MULTIPOINT_C_ROOT 0x02
#define WSA_FLAG_MULTIPOINT_C_LEAF 0x04
#define WSA_FLAG_MULTIPOINT_D_ROOT 0x08
#define WSA_FLAG_MULTIPOINT_D_LEAF 0x10
#define WSA_FLAG_ACCESS_SYSTEM_SECURITY 0x40
#define WSA_FLAG_NO_HANDLE_INHERIT 0x80 /* close-on-exec */
#define WSA_FLAG_REGISTERED_IO 0x100

/* dwServiceFlags1 */
#define XP1_CONNECTIONLESS 0x00000001
#define XP1_GUARANTEED_DELIVERY 0x00000002
#define XP1_GUARANTEED_ORDER 0x00000004
#define XP1_MESSAGE_ORIENTED 0x00000008
#define XP1_PSEUDO_STREAM 0x00000010
#define XP1_GRACEFUL_CLOSE 0x00000020
#define XP1_EXPEDITED_DATA 0x00000040
#define XP1_CONNECT_DATA 0x00000080
#define XP1_DISCONNECT_DATA 0x00000100
#define XP1_SUPPORT_BROADCAST 0x00000200
#define XP1_SUPPORT_MULTIPOINT 0x00000400
#define XP1_MULTIPOINT_CONTROL_PLANE 0x00000800
#define XP1_MULTIPOINT_DATA_PLANE 0x00001000
#define XP1_QOS_SUPPORTED 0x00002000
#define XP1_INTERRUPT 0x00004000
#define XP1_UNI_SEND 0x00008000
#define XP1_UNI_RECV 0x00010000
#define XP1_IFS_HANDLES 0x00020000
#define XP1_PARTIAL_MESSAGE 0x00040000
#define XP1_SAN_SUPPORT_SDP 0x00080000

/* dwProviderFlags */
#define PFL_MULTIPLE_PROTO_ENTRIES 0x00000001
#define PFL_RECOMMENDED_PROTO_ENTRY 0x00000002
#define PFL_HIDDEN 0x00000004
#define PFL_MATCHES_PROTOCOL_ZERO 0x00000008
#define PFL_NETWORKDIRECT_PROVIDER 0x00000010

/* Error codes (WSAGetLastError), Windows' numbers */
#define WSABASEERR 10000
#define WSAEINTR 10004
#define WSAEBADF 10009
#define WSAEACCES 10013
#define WSAEFAULT 10014
#define WSAEINVAL 10022
#define WSAEMFILE 10024
#define WSAEWOULDBLOCK 10035
#define WSAEINPROGRESS 10036
#define WSAEALREADY 10037
#define WSAENOTSOCK 10038
#define WSAEDESTADDRREQ 10039
#define WSAEMSGSIZE 10040
#define WSAEPROTOTYPE 10041
#define WSAENOPROTOOPT 10042
#define WSAEPROTONOSUPPORT 10043
#define WSAESOCKTNOSUPPORT 10044
#define WSAEOPNOTSUPP 10045
#define WSAEPFNOSUPPORT 10046
#define WSAEAFNOSUPPORT 10047
#define WSAEADDRINUSE 10048
#define WSAEADDRNOTAVAIL 10049
#define WSAENETDOWN 10050
#define WSAENETUNREACH 10051
#define WSAENETRESET 10052
#define WSAECONNABORTED 10053
#define WSAECONNRESET 10054
#define WSAENOBUFS 10055
#define WSAEISCONN 10056
#define WSAENOTCONN 10057
#define WSAESHUTDOWN 10058
#define WSAETOOMANYREFS 10059
#define WSAETIMEDOUT 10060
#define WSAECONNREFUSED 10061
#define WSAELOOP 10062
#define WSAENAMETOOLONG 10063
#define WSAEHOSTDOWN 10064
#define WSAEHOSTUNREACH 10065
#define WSAENOTEMPTY 10066
#define WSAEPROCLIM 10067
#define WSAEUSERS 10068
#define WSAEDQUOT 10069
#define WSAESTALE 10070
#define WSAEREMOTE 10071
#define WSASYSNOTREADY 10091
#define WSAVERNOTSUPPORTED 10092
#define WSANOTINITIALISED 10093
#define WSAEDISCON 10101
#define WSAENOMORE 10102
#define WSAECANCELLED 10103
#define WSAEINVALIDPROCTABLE 10104
#define WSAEINVALIDPROVIDER 10105
#define WSAEPROVIDERFAILEDINIT 10106
#define WSASYSCALLFAILURE 10107
#define WSASERVICE_NOT_FOUND 10108
#define WSATYPE_NOT_FOUND 10109
#define WSA_E_NO_MORE 10110
#define WSA_E_CANCELLED 10111
#define WSAEREFUSED 10112
#define WSAHOST_NOT_FOUND 11001
#define WSATRY_AGAIN 11002
#define WSANO_RECOVERY 11003
#define WSANO_DATA 11004

/* Starts using the library and this process's sharing session; reference counted.
   Returns 0 or the error itself (WSAVERNOTSUPPORTED, WSAEFAULT, WSASYSNOTREADY). */
int WSAAPI WSAStartup(WORD wVersionRequested, LPWSADATA lpWSAData);
/* Ends one WSAStartup; the last closes the sockets WSASocket made, ends the session and
   releases infos never redeemed. 0 or SOCKET_ERROR (WSANOTINITIALISED). */
int WSAAPI WSACleanup(void);
/* This thread's last error: of this library's last failed call, or of the last failed
   BSD socket call (send, recv, connect, accept, bind, listen, setsockopt, ...), its errno
   translated (ECONNREFUSED: WSAECONNREFUSED; EBADF and ENOTSOCK: WSAENOTSOCK; EAGAIN,
   and a nonblocking connect's EINPROGRESS: WSAEWOULDBLOCK), or what WSASetLastError
   set, whichever came last. A successful call of this library leaves it untouched.
   It is read from errno, so, as errno does: a successful libc call leaves it as it was
   (as on Windows); a failed libc call that is no socket call changes it too, and an
   errno without a Winsock code is returned as it is (ENOENT: 2); errno = 0 clears it. */
int WSAAPI WSAGetLastError(void);
/* Sets this thread's last error, and errno to the matching value (EINVAL for WSAEINVAL;
   one no libc call sets, for a code without one), so that the two agree. */
void WSAAPI WSASetLastError(int iError);

/* Source: the info with which process dwProcessId creates its own descriptor for s.
   Errors in order: WSANOTINITIALISED, WSAENOTSOCK, WSAEINVAL (pid), WSAEFAULT (NULL),
   WSAENOBUFS (the target's queue is full). */
int WSAAPI WSADuplicateSocketA(SOCKET s, DWORD dwProcessId, LPWSAPROTOCOL_INFOA lpProtocolInfo);
int WSAAPI WSADuplicateSocketW(SOCKET s, DWORD dwProcessId, LPWSAPROTOCOL_INFOW lpProtocolInfo);

/* Target: with an info, this process's descriptor for the shared socket (once per info;
   af/type/protocol each FROM_PROTOCOL_INFO, 0 or the info's value); with NULL, an
   ordinary socket(af, type, protocol). dwFlags: WSA_FLAG_OVERLAPPED (no effect),
   WSA_FLAG_NO_HANDLE_INHERIT (close-on-exec). g must be 0. */
SOCKET WSAAPI WSASocketA(int af, int type, int protocol, LPWSAPROTOCOL_INFOA lpProtocolInfo,
                         GROUP g, DWORD dwFlags);
SOCKET WSAAPI WSASocketW(int af, int type, int protocol, LPWSAPROTOCOL_INFOW lpProtocolInfo,
                         GROUP g, DWORD dwFlags);

int WSAAPI closesocket(SOCKET s);
/* FIONBIO and FIONREAD; argp points to an unsigned long (u_long). */
int WSAAPI ioctlsocket(SOCKET s, long cmd, u_long FAR *argp);

#ifdef UNICODE
typedef WSAPROTOCOL_INFOW WSAPROTOCOL_INFO;
typedef LPWSAPROTOCOL_INFOW LPWSAPROTOCOL_INFO;
#define WSADuplicateSocket WSADuplicateSocketW
#define WSASocket WSASocketW
#else
typedef WSAPROTOCOL_INFOA WSAPROTOCOL_INFO;
typedef LPWSAPROTOCOL_INFOA LPWSAPROTOCOL_INFO;
#define WSADuplicateSocket WSADuplicateSocketA
#define WSASocket WSASocketA
#endif

#ifdef __cplusplus
}
#endif

#endif /* SOCKSHARE_WINSOCK2_H */
