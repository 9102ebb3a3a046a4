from moatmeter.cli import main

main()
